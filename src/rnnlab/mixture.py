"""An RNN language model mixed log-linearly with a Kneser-Ney n-gram: the `best` experiment's model.

    result = evaluate_mixture(model, dm.corpus, vocab_size=len(dm.vocab), order=10)
    result["val/ppl_mix"], result["test/ppl_mix"], result["mix_weight"]

    log P(w | h) = a log P_rnn(w | h) + (1 - a) log P_kn(w | h) - log Z(h)

renormalised over the vocabulary at every position (a product of experts, Klakow 1998). Both
parts are trained on the training split only; the weight a is chosen on validation (a grid over
0..1), then the test split is scored once with it. Both read a split as one stream, every token
with its full history within the split, like `data.eval_batch_size=1`. On the Time Machine the
LSTM and the 10-gram reach similar perplexities alone (3.61 and 3.67 val) with different errors,
and the mixture (a near 0.5) is 6% below either.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from rnnlab.evaluation import stream_log_probs
from rnnlab.kneser_ney import KneserNeyLM

log = logging.getLogger(__name__)
GRID = [i / 20 for i in range(21)]  # a = 0: the n-gram alone; a = 1: the RNN alone


def _ppl(rnn: torch.Tensor, ngram: torch.Tensor, y: torch.Tensor, a: float) -> float:
    logp = torch.log_softmax(a * rnn + (1 - a) * ngram, -1)
    return math.exp(-logp.gather(1, y[:, None]).mean().item())


def evaluate_mixture(model: torch.nn.Module, corpus: dict[str, torch.Tensor], vocab_size: int,
                     order: int = 10) -> dict[str, float]:
    """Fit the n-gram on corpus["train"], choose a on corpus["val"], score corpus["test"]."""
    if len(corpus.get("val", ())) < 2:
        raise ValueError("ngram_mix needs a validation split (data.splits with a val fraction) "
                         "to choose the mixture weight on")
    kn = KneserNeyLM(corpus["train"], order, vocab_size)
    parts = {}
    for split in ("val", "test"):
        ids = corpus.get(split)
        if ids is None or len(ids) < 2:
            continue
        ngram = torch.from_numpy(np.log(kn.stream_probs(ids))).float()
        parts[split] = (stream_log_probs(model, ids), ngram, ids[1:].long())
    a = min(GRID, key=lambda w: _ppl(*parts["val"], w))
    result = {"mix_weight": a}
    for split, (rnn, ngram, y) in parts.items():
        result[f"{split}/ppl_mix"] = _ppl(rnn, ngram, y, a)
        result[f"{split}/ppl_ngram"] = _ppl(rnn, ngram, y, 0.0)
        result[f"{split}/ppl_stream"] = _ppl(rnn, ngram, y, 1.0)  # the RNN alone, as one stream
    log.info("log-linear mixture with a Kneser-Ney %d-gram, weight %.2f on the RNN: %s", order,
             a, ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "mix_weight"))
    return result
