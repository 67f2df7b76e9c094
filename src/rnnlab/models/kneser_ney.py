"""Interpolated modified Kneser-Ney n-gram language model (Chen & Goodman 1998) over token ids.

    lm = KneserNeyLM(dm.corpus["train"], order=10, vocab_size=len(dm.vocab))
    lm.probs([4, 7])                       # P(. | 4 7) over the whole vocabulary, sums to 1
    P = lm.stream_probs(dm.corpus["val"])  # (L-1, V): each position given the ones before it
    lm.perplexity(dm.corpus["val"])

The strongest count-based baseline here, against the add-k models of `rnnlab.models.ngram`
(their scores on the Time Machine: docs/results.md).

P(w | c) = max(#(c, w) - D(#(c, w)), 0) / #c + gamma(c) P(w | c') with c' = c minus its first
token and gamma(c) = sum_w D(#(c, w)) / #c, so every distribution sums to 1. The highest order
counts n-grams; lower orders count *continuation* types (how many distinct tokens precede (c', w)),
and the base is uniform over the vocabulary. Three discounts per order, for counts 1, 2 and 3+,
come from that order's counts of counts. A context never seen at some order keeps the
distribution of the orders below it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

FALLBACK_DISCOUNT = 0.75  # where counts of counts are too sparse for the estimate
MIN_DISCOUNT = 0.05


def _discounts(table: dict[tuple, Counter]) -> tuple[float, float, float, float]:
    """(0, D1, D2, D3+) from the counts of counts n1..n4 (Chen & Goodman's estimate)."""
    coc = Counter(k for nexts in table.values() for k in nexts.values())
    n1, n2, n3, n4 = (coc[i] for i in (1, 2, 3, 4))
    if not (n1 and n2 and n3 and n4):
        return (0.0, FALLBACK_DISCOUNT, FALLBACK_DISCOUNT, FALLBACK_DISCOUNT)
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    # a zero discount would leave no mass for the lower orders (and unseen tokens at P = 0)
    return (0.0, *(min(max(di, MIN_DISCOUNT), float(i + 1)) for i, di in enumerate(d)))


class KneserNeyLM:
    def __init__(self, ids, order: int, vocab_size: int):
        if order < 1:
            raise ValueError(f"order={order} must be a positive integer")
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if ids and (min(ids) < 0 or max(ids) >= vocab_size):
            raise ValueError(f"indices must lie in [0, vocab_size={vocab_size})")
        self.order, self.V = order, vocab_size
        counts = [defaultdict(Counter) for _ in range(order + 1)]  # [n][context][next]
        for n in range(1, order + 1):
            for i in range(n - 1, len(ids)):
                counts[n][tuple(ids[i - n + 1 : i])][ids[i]] += 1
        # the order below the top counts distinct left extensions of each (context, next)
        self.tables = [None] * (order + 1)
        self.tables[order] = counts[order]
        for n in range(order, 1, -1):
            lower = defaultdict(Counter)
            for ctx, nexts in counts[n].items():
                for w in nexts:
                    lower[ctx[1:]][w] += 1
            self.tables[n - 1] = lower
        self.discounts = [None] + [_discounts(self.tables[n]) for n in range(1, order + 1)]
        self.totals = [None] + [{c: sum(nx.values()) for c, nx in self.tables[n].items()}
                                for n in range(1, order + 1)]

    def probs(self, context: Sequence[int] = ()) -> np.ndarray:
        """P(w | the last order-1 tokens of context) for every w in the vocabulary."""
        context = tuple(int(c) for c in context)[max(len(context) - (self.order - 1), 0) :]
        p = np.full(self.V, 1.0 / self.V)
        for n in range(1, len(context) + 2):
            ctx = context[len(context) - (n - 1) :] if n > 1 else ()
            nexts = self.tables[n].get(ctx)
            if not nexts:  # unseen at this order, so at every higher one too
                break
            D, total = self.discounts[n], self.totals[n][ctx]
            q = np.zeros(self.V)
            gamma = 0.0
            for w, k in nexts.items():
                d = D[min(k, 3)]
                q[w] = k - d
                gamma += d
            p = q / total + (gamma / total) * p
        return p

    def stream_probs(self, ids) -> np.ndarray:
        """(L-1, V): the distribution of ids[i+1] given ids[..i] within this sequence, as an RNN
        reading it as one stream scores it."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if len(ids) < 2:
            raise ValueError("nothing to score: a split needs at least 2 tokens")
        return np.stack([self.probs(ids[max(0, i - self.order + 2) : i + 1])
                         for i in range(len(ids) - 1)])

    def perplexity(self, ids) -> float:
        P = self.stream_probs(ids)
        y = np.asarray(ids.tolist() if hasattr(ids, "tolist") else ids)[1:]
        return float(np.exp(-np.log(P[np.arange(len(y)), y]).mean()))
