"""Every part learns from what it has read: the wiring of `ngram_mix.online` (experiment=best).

    found, log_probs = evaluate_dynamic_rules(model, dm.corpus, cfg.eval)  # both rules, the
    # better on val: found["dyn_rule"] is "rms" (evaluation.dynamic) or "krause" (dynamic_krause)
    result = evaluate_adaptive(model, dm.corpus, vocab_size=len(dm.vocab), order=10,
                               dynamic=log_probs,  # or dynamic=None
                               words=WordCompletion(dm.corpus["train"], dm.vocab[" "], 28))
    result["val/ppl_online"], result["test/ppl_online"], result["online_lr"], ...

Each split is scored once per expert, every expert causal on its own: the LSTM as trained
(static), the LSTM under dynamic evaluation (when given), the Kneser-Ney n-gram of the training
split (static), the same n-gram counting the split as it scores it (evaluation.adaptive_ngram),
and, when given, a word n-gram read by characters (evaluation.word_completion, also counting).
evaluation.online_mixture combines them with weights that depend on the context (the dynamic
LSTM's and the adaptive n-gram's entropies, the longest n-gram context seen, the context's last
token, whether a known word extends the current one and its length) and learn from every scored
token. Its learning rate, and whether it mixes every expert or only those that adapt, are
chosen on val (read online from the experts' geometric mean); test starts from the weights val
taught (`passes` online passes over val at that rate) and keeps learning as it reads. Test is
scored once. Beside it, for the record of what each part adds: the adaptive n-gram alone and its
log-linear mixture with the (dynamic) LSTM at one weight chosen on val (`adapt_mix`, the static
`ngram_mix` with adaptive counts).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch

from rnnlab.evaluation.adaptive_ngram import adaptive_stream_probs
from rnnlab.evaluation.dynamic import evaluate_dynamic
from rnnlab.evaluation.dynamic_krause import evaluate_krause
from rnnlab.evaluation.heldout import stream_log_probs
from rnnlab.evaluation.mixture import GRID, _ppl
from rnnlab.evaluation.online_mixture import initial_weights, mixture_features, online_mixture
from rnnlab.evaluation.word_completion import WordCompletion
from rnnlab.models.kneser_ney import KneserNeyLM

log = logging.getLogger(__name__)
LEARNING_RATES = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008)


def _ppl_of(logp: np.ndarray, y: np.ndarray) -> float:
    return float(np.exp(-logp[np.arange(len(y)), y].mean()))


def evaluate_dynamic_rules(model: torch.nn.Module, corpus: dict[str, torch.Tensor], ev
                           ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Dynamic evaluation as the `eval` config node says: today's rule (evaluation.dynamic) and,
    with `ev.krause`, Krause et al.'s beside it; the log-probabilities of the better on val."""
    found, log_probs = evaluate_dynamic(model, corpus, ev.lr, ev.decay, ev.window,
                                        ev.get("normalize", True))
    found["dyn_rule"] = "rms"
    if ev.get("krause"):
        krause, krause_log_probs = evaluate_krause(model, corpus, ev.krause_lr, ev.krause_decay,
                                                   ev.window)
        found.update(krause)
        if krause["val/ppl_krause"] < found["val/ppl_dyn"]:
            found["dyn_rule"], log_probs = "krause", krause_log_probs
    return found, log_probs


def expert_streams(model: torch.nn.Module, ids: torch.Tensor, kn: KneserNeyLM,
                   dynamic: torch.Tensor | None = None, words: WordCompletion | None = None
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(K, L-1, V) log-probabilities of ids[1:] from every expert (the static LSTM, the dynamic
    one when given, the static and the adaptive n-gram, the word n-gram when given, in this
    order), (L-1, F) features and the experts' names."""
    lstm = stream_log_probs(model, ids).double().numpy()
    dyn = dynamic.double().numpy() if dynamic is not None else None
    static = np.log(kn.stream_probs(ids))
    probs, matched = adaptive_stream_probs(kn, ids)
    adaptive = np.log(probs)
    named = {"lstm": lstm, "lstm_dynamic": dyn, "ngram": static, "ngram_adaptive": adaptive}
    features = mixture_features(dyn if dyn is not None else lstm, adaptive, matched, kn.order,
                                ids[:-1].numpy())  # row t's context ends with ids[t]
    if words is not None:  # whether a known word extends the current word's prefix, and one-hot
        named["words"], known, length = words.stream_log_probs(ids)  # its length (0..5, 6+)
        features = np.column_stack([features, known, np.eye(7)[np.minimum(length, 6)]])
    named = {k: v for k, v in named.items() if v is not None}
    return np.stack(list(named.values())), features, list(named)


def _last_lstm(names: list[str]) -> int:
    """The index of the LSTM the mixtures use: the dynamic one when there is one."""
    return names.index("lstm_dynamic" if "lstm_dynamic" in names else "lstm")


def online_choice(experts: dict[str, np.ndarray], features: dict[str, np.ndarray],
                  targets: dict[str, np.ndarray], names: list[str],
                  lrs: tuple[float, ...] = LEARNING_RATES, passes: int = 2
                  ) -> tuple[dict, dict[tuple[str, float], float]]:
    """The online mixture's experts and learning rate chosen on val (read from the geometric
    mean), test read from the weights val taught (`passes` passes at that rate); the val/ppl of
    every (experts, rate) tried. `names`: expert_streams' names of the K experts."""
    K = len(experts["val"])
    # every expert, or the ones that adapt (the last LSTM, the adaptive n-gram, the words):
    # fewer weights to learn from 8k tokens can beat more experts
    adapting = [_last_lstm(names)] + [names.index(n) for n in ("ngram_adaptive", "words")
                                      if n in names]
    subsets = {"all": list(range(K))}
    if len(adapting) < K:
        subsets["adaptive"] = adapting
    tried = {}
    for (name, keep), lr in itertools.product(subsets.items(), lrs):
        W0 = initial_weights(len(keep), features["val"].shape[1])
        logp, _ = online_mixture(experts["val"][keep], features["val"], targets["val"], W0, lr)
        tried[(name, lr)] = _ppl_of(logp, targets["val"])
    name, lr = min(tried, key=tried.get)
    result = {"val/ppl_online": tried[(name, lr)], "online_lr": lr, "online_experts": name}
    keep = subsets[name]
    if "test" in experts:
        W = initial_weights(len(keep), features["val"].shape[1])
        for _ in range(passes):
            _, W = online_mixture(experts["val"][keep], features["val"], targets["val"], W, lr)
        logp, _ = online_mixture(experts["test"][keep], features["test"], targets["test"], W, lr)
        result["test/ppl_online"] = _ppl_of(logp, targets["test"])
    return result, tried


def evaluate_adaptive(model: torch.nn.Module, corpus: dict[str, torch.Tensor], vocab_size: int,
                      order: int = 10, dynamic: dict[str, torch.Tensor] | None = None,
                      lrs: tuple[float, ...] = LEARNING_RATES, passes: int = 2,
                      words: WordCompletion | None = None) -> dict[str, float]:
    """The adaptive n-gram, its mixture at one weight, and the online mixture of every expert
    (with `words`, the word n-gram read by characters too); choices on corpus["val"],
    corpus["test"] scored once."""
    if len(corpus.get("val", ())) < 2:
        raise ValueError("ngram_mix.online needs a validation split to choose its learning rate")
    kn = KneserNeyLM(corpus["train"], order, vocab_size)
    splits = [s for s in ("val", "test") if len(corpus.get(s, ())) >= 2]
    experts, features, targets = {}, {}, {}
    result: dict[str, float] = {}
    for s in splits:
        experts[s], features[s], names = expert_streams(
            model, corpus[s], kn, dynamic[s] if dynamic is not None else None, words)
        targets[s] = corpus[s][1:].numpy().astype(np.int64)
        for name in ("ngram_adaptive", "words"):
            if name in names:
                result[f"{s}/ppl_{name}"] = _ppl_of(experts[s][names.index(name)], targets[s])
    # the adaptive n-gram in the static mixture's place: one weight on the (dynamic) LSTM
    rnn = {s: torch.from_numpy(experts[s][_last_lstm(names)]) for s in splits}
    ngram = {s: torch.from_numpy(experts[s][names.index("ngram_adaptive")]) for s in splits}
    y = {s: torch.from_numpy(targets[s]) for s in splits}
    a = min(GRID, key=lambda w: _ppl(rnn["val"], ngram["val"], y["val"], w))
    result["adapt_mix_weight"] = a
    for s in splits:
        result[f"{s}/ppl_adapt_mix"] = _ppl(rnn[s], ngram[s], y[s], a)
    online, tried = online_choice(experts, features, targets, names, lrs, passes)
    result.update(online)
    log.info("adaptive %d-gram and online mixture (val/ppl by experts, lr: %s): %s", order,
             ", ".join(f"{n} {lr:g} {v:.4f}" for (n, lr), v in tried.items()),
             ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in result.items()))
    return result
