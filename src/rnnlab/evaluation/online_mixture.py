"""An online, context-dependent log-linear mixture of experts (PAQ-style mixing): the weights that
combine the experts' log-probabilities depend on features of the context and learn from every
token after it is scored.

    logp, W = online_mixture(experts, features, targets, W0, lr=0.02)
    # experts: (K, L, V) log-probabilities; features: (L, F); targets: (L,); W0: (K, F)

At position t the weights are lambda = W f_t (one per expert) and

    log P(w | h_t) = sum_k lambda_k log P_k(w | h_t) - log Z_t

renormalised over the vocabulary, so every distribution sums to 1. After P(. | h_t) is recorded,
W takes one gradient step on -log P(y_t | h_t): d/d lambda_k = E_P[log P_k] - log P_k(y_t). The
loss is convex in W (a log-sum-exp of linear functions minus a linear one), so plain online
gradient descent is a sound learner. Row t never depends on targets t, t+1, ...: the features
and experts must be causal themselves (see evaluation/adaptive_eval.py).

    mixture_features(lstm_logp, ngram_logp, matched, order, ids[:-1])  # adaptive_eval's
"""

from __future__ import annotations

import numpy as np


def online_mixture(experts: np.ndarray, features: np.ndarray, targets: np.ndarray,
                   W0: np.ndarray, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """(L, V) mixed log-probabilities, each row computed before the weights learn from its target,
    and the weights after the last token (to start another stream from)."""
    K, L, V = experts.shape
    if features.shape[0] != L or targets.shape != (L,) or W0.shape != (K, features.shape[1]):
        raise ValueError(f"shapes do not fit: experts {experts.shape}, features "
                         f"{features.shape}, targets {targets.shape}, W0 {W0.shape}")
    E = np.ascontiguousarray(np.moveaxis(experts, 1, 0), dtype=np.float64)  # (L, K, V)
    F = np.asarray(features, dtype=np.float64)
    W = np.array(W0, dtype=np.float64)
    out = np.empty((L, V))
    for t in range(L):
        e, f = E[t], F[t]
        z = (W @ f) @ e
        z -= z.max()
        logp = z - np.log(np.exp(z).sum())
        out[t] = logp
        if lr:
            p = np.exp(logp)
            grad = e[:, targets[t]] - e @ p  # d log P(y_t) / d lambda
            W += lr * np.outer(grad, f)
    return out, W


def entropy(logp: np.ndarray) -> np.ndarray:
    """(L,) entropies (nats) of the rows of (L, V) log-probabilities."""
    return -(np.exp(logp) * logp).sum(-1)


def mixture_features(lstm_logp: np.ndarray, ngram_logp: np.ndarray, matched: np.ndarray,
                     order: int, last: np.ndarray) -> np.ndarray:
    """(L, 3 + order + V) features of each position's context: a bias, the LSTM's and the
    n-gram's entropies over log V (how sure each is), one-hot the longest n-gram order whose
    context the n-gram has seen (1..order: how much it knows there), and one-hot the context's
    last token (PAQ selects its mixer weights by such a small context: after a space, the n-gram
    knows less of the next word than within one)."""
    L, V = lstm_logp.shape
    orders = np.zeros((L, order))
    orders[np.arange(L), np.clip(matched, 1, order) - 1] = 1.0
    tokens = np.zeros((L, V))
    tokens[np.arange(L), last] = 1.0
    return np.column_stack([np.ones(L), entropy(lstm_logp) / np.log(V),
                            entropy(ngram_logp) / np.log(V), orders, tokens])


def initial_weights(num_experts: int, num_features: int) -> np.ndarray:
    """Every expert at 1/K on the bias and 0 elsewhere: the geometric mean of the experts."""
    W0 = np.zeros((num_experts, num_features))
    W0[:, 0] = 1.0 / num_experts
    return W0
