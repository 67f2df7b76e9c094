"""An RNN language model mixed log-linearly with a Kneser-Ney n-gram: the `best` experiment's model.

    result = evaluate_mixture(model, dm.corpus, vocab_size=len(dm.vocab), order=10)
    result["val/ppl_mix"], result["test/ppl_mix"], result["mix_weight"]

    log P(w | h) = a log P_rnn(w | h) + (1 - a) log P_kn(w | h) - log Z(h)

renormalised over the vocabulary at every position (a product of experts, Klakow 1998). Both
parts are trained on the training split only; the weight a is chosen on validation (a grid over
0..1), then the test split is scored once with it. Both read a split as one stream, every token
with its full history within the split, like `data.eval_batch_size=1`. It pays when the two
parts reach similar perplexities alone with different errors (the results: docs/results.md).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from rnnlab.evaluation.heldout import stream_log_probs
from rnnlab.models.kneser_ney import KneserNeyLM

log = logging.getLogger(__name__)
GRID = [i / 20 for i in range(21)]  # a = 0: the n-gram alone; a = 1: the RNN alone


def _ppl(rnn: torch.Tensor, ngram: torch.Tensor, y: torch.Tensor, a: float) -> float:
    logp = torch.log_softmax(a * rnn + (1 - a) * ngram, -1)
    return math.exp(-logp.gather(1, y[:, None]).mean().item())


def evaluate_mixture(model: torch.nn.Module, corpus: dict[str, torch.Tensor], vocab_size: int,
                     order: int = 10, dynamic: dict[str, torch.Tensor] | None = None
                     ) -> dict[str, float]:
    """Fit the n-gram on corpus["train"], choose a on corpus["val"], score corpus["test"].
    `dynamic`: the dynamically evaluated model's log-probabilities per split
    (evaluation.dynamic.evaluate_dynamic), mixed the same way as `dyn_mix` with its own weight."""
    if len(corpus.get("val", ())) < 2:
        raise ValueError("ngram_mix needs a validation split (data.splits with a val fraction) "
                         "to choose the mixture weight on")
    kn = KneserNeyLM(corpus["train"], order, vocab_size)
    splits = [s for s in ("val", "test") if len(corpus.get(s, ())) >= 2]
    ngram = {s: torch.from_numpy(np.log(kn.stream_probs(corpus[s]))).float() for s in splits}
    targets = {s: corpus[s][1:].long() for s in splits}
    result = {}
    rnns = {"mix": {s: stream_log_probs(model, corpus[s]) for s in splits}}
    if dynamic is not None:
        rnns["dyn_mix"] = dynamic
    for name, rnn in rnns.items():
        a = min(GRID, key=lambda w: _ppl(rnn["val"], ngram["val"], targets["val"], w))
        result[f"{name}_weight"] = a
        for s in splits:
            result[f"{s}/ppl_{name}"] = _ppl(rnn[s], ngram[s], targets[s], a)
    for s in splits:
        result[f"{s}/ppl_ngram"] = _ppl(rnns["mix"][s], ngram[s], targets[s], 0.0)
        # the RNN alone, read as one stream
        result[f"{s}/ppl_stream"] = _ppl(rnns["mix"][s], ngram[s], targets[s], 1.0)
    log.info("log-linear mixtures with a Kneser-Ney %d-gram (weights on the RNN): %s", order,
             ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return result
