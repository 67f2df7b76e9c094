"""A Kneser-Ney n-gram that keeps counting while it scores (PPM-style adaptation): after a token is
scored, its n-grams (every order) join the counts, so later text in the same split benefits.

    kn = KneserNeyLM(dm.corpus["train"], order=10, vocab_size=len(dm.vocab))
    P, matched = adaptive_stream_probs(kn, dm.corpus["val"])
    P[i]        # (V,): P(ids[i+1] | ids[:i+1]), from the training counts plus ids[:i+1]'s own
    matched[i]  # the longest n whose context (n-1 tokens) was seen: 1..order (a mixture feature)

Each split starts from the training counts (`kn` is never modified: the added counts live in an
overlay that is thrown away at the end of the stream), so val and test do not see each other.
The counts are updated the way KneserNeyLM builds them: the top order counts n-grams; a lower
order n counts distinct left extensions, so it gains one when the (n+1)-gram ending at the token
is new. "New" is read from the (n+1) table, which for n+1 below the top holds continuation counts:
an (n+1)-gram seen only at the very start of the training text (no token before it) counts as
unseen there, the same few n-grams KneserNeyLM itself leaves out of its continuation counts. The
discounts stay those of the training counts.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from rnnlab.models.kneser_ney import KneserNeyLM


class _Overlay:
    """The training counts of `kn` plus the counts added since the stream began."""

    def __init__(self, kn: KneserNeyLM):
        self.kn = kn
        self.added = [defaultdict(Counter) for _ in range(kn.order + 1)]
        self.added_totals = [Counter() for _ in range(kn.order + 1)]

    def nexts(self, n: int, ctx: tuple) -> list[tuple[int, int]]:
        base, extra = self.kn.tables[n].get(ctx), self.added[n].get(ctx)
        if not extra:
            return list(base.items()) if base else []
        merged = Counter(base) if base else Counter()
        merged.update(extra)
        return list(merged.items())

    def total(self, n: int, ctx: tuple) -> int:
        return self.kn.totals[n].get(ctx, 0) + self.added_totals[n][ctx]

    def count(self, n: int, ctx: tuple, w: int) -> int:
        base, extra = self.kn.tables[n].get(ctx), self.added[n].get(ctx)
        return (base[w] if base else 0) + (extra[w] if extra else 0)

    def probs(self, context: tuple) -> tuple[np.ndarray, int]:
        """KneserNeyLM.probs over the merged counts, and the longest order with its context seen."""
        kn = self.kn
        p = np.full(kn.V, 1.0 / kn.V)
        matched = 0
        for n in range(1, len(context) + 2):
            ctx = context[len(context) - (n - 1):] if n > 1 else ()
            nexts = self.nexts(n, ctx)
            if not nexts:  # unseen at this order, so at every higher one too
                break
            matched = n
            D, total = kn.discounts[n], self.total(n, ctx)
            q = np.zeros(kn.V)
            gamma = 0.0
            for w, k in nexts:
                d = D[min(k, 3)]
                q[w] = k - d
                gamma += d
            p = q / total + (gamma / total) * p
        return p, matched

    def add(self, history: list[int], w: int) -> None:
        """Count token w after `history` (the split's tokens before it), at every order."""
        top = self.kn.order
        new_above = False  # whether the (n+1)-gram ending in w was new before this token
        for n in range(min(top, len(history) + 1), 0, -1):
            ctx = tuple(history[len(history) - (n - 1):]) if n > 1 else ()
            unseen = self.count(n, ctx, w) == 0
            if n == top or new_above:
                self.added[n][ctx][w] += 1
                self.added_totals[n][ctx] += 1
            new_above = unseen


def adaptive_stream_probs(kn: KneserNeyLM, ids) -> tuple[np.ndarray, np.ndarray]:
    """(L-1, V) probabilities of ids[1:], each position scored before its token is counted, and
    (L-1,) the longest matched order per position. `kn` is left as it was."""
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    if len(ids) < 2:
        raise ValueError("nothing to score: a split needs at least 2 tokens")
    overlay = _Overlay(kn)
    P = np.empty((len(ids) - 1, kn.V))
    matched = np.empty(len(ids) - 1, dtype=np.int64)
    for i in range(len(ids) - 1):
        P[i], matched[i] = overlay.probs(tuple(ids[max(0, i - kn.order + 2): i + 1]))
        overlay.add(ids[max(0, i - kn.order + 2): i + 1], ids[i + 1])  # after it was scored
    return P, matched
