"""N-gram statistics and add-k smoothed n-gram language models over index sequences (D2L 8.3).

    from rnnlab.models.ngram import NGramCounts, AddKLM, zipf_fit, perplexity_table
    counts = NGramCounts(dm.corpus["train"], max_n=5, vocab_size=len(dm.vocab))
    counts.top(2, 10)                      # the 10 most frequent bigrams: [((i, j), count), ...]
    counts.distinct(3)                     # number of distinct trigrams
    zipf_fit(counts.counts[0], rank_min=10, rank_max=1000, min_count=2)["exponent"]
    lm = AddKLM(counts, n=3, k=0.1)
    lm.probs([4, 7])                       # P(. | 4 7) over the whole vocabulary, sums to 1
    lm.perplexity(dm.corpus["val"])

Counting is vectorised and needs no V**n code space: the o-gram starting at position i is coded as
`key(o-1-gram at i) * V + ids[i + o - 1]`. While V**o is small the key is the (o-1)-gram's own code
and an order is counted by one linear-time `np.bincount`; beyond, the key is the (o-1)-gram's rank
among the sorted distinct (o-1)-grams, so codes stay below N * V, and an order is one `np.unique`
(a sort). A query sequence is looked up order by order with `np.searchsorted` against the same
sorted codes. A 10 MB corpus counts to n = 5 in seconds.

The add-k model: P(w | c) = (#(c, w) + k) / (#c + k V), with #c counted as a *prefix* of an n-gram
(so sum_w #(c, w) = #c and every distribution sums to exactly 1, also for unseen contexts, which
get the uniform 1/V). V is the whole vocabulary including `<unk>` (index 0).
Perplexity scores positions 1..L-1 of a split, like the RNN (which never predicts a split's first
token); position i < n-1 has a shorter history and is scored by the (i+1)-gram model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_ids(ids) -> np.ndarray:
    if hasattr(ids, "numpy"):  # a torch tensor
        ids = ids.numpy()
    return np.ascontiguousarray(ids, dtype=np.int64).ravel()


DENSE_MAX = 1 << 24  # orders with at most this many possible codes are counted by bincount


class NGramCounts:
    """Counts of every n-gram of order 1..max_n in one index sequence (e.g. the training split).

    Per order o (list index o-1): `codes` (sorted distinct o-gram codes), `counts`, and `ctx` (how
    often each distinct (o-1)-gram is the prefix of an o-gram; for o = 1 the number of unigram
    positions). An o-gram's code is `key(o-1-gram) * V + last token`, where the key is the
    (o-1)-gram's own code while V**(o-1) is small (`dense`: counted by a linear-time bincount)
    and its rank among the distinct (o-1)-grams beyond (counted by one sort, `np.unique`).
    Either way codes sort lexicographically by token sequence.
    """

    def __init__(self, ids, max_n: int, vocab_size: int):
        ids = _as_ids(ids)
        if max_n < 1:
            raise ValueError(f"max_n={max_n} must be a positive integer")
        if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"indices must lie in [0, vocab_size={vocab_size})")
        self.max_n, self.V, self.num_tokens = max_n, vocab_size, len(ids)
        self.codes: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.ctx: list[np.ndarray] = []
        self.dense: list[bool] = []
        key = ids
        for o in range(1, max_n + 1):
            m = max(len(ids) - o + 1, 0)
            codes = ids if o == 1 else key[:m] * vocab_size + ids[o - 1 :]
            size = vocab_size**o
            dense = size <= min(DENSE_MAX, max(1 << 16, 4 * len(ids)))
            if dense:
                full = np.bincount(codes, minlength=size)
                uniq = np.flatnonzero(full)
                cnt = full[uniq]
            else:
                uniq, inv, cnt = np.unique(codes, return_inverse=True, return_counts=True)
            if o == 1:
                ctx = np.array([m])
            elif self.dense[-1]:
                ctx = np.bincount(key[:m], minlength=vocab_size ** (o - 1))[self.codes[-1]]
            else:
                ctx = np.bincount(key[:m], minlength=len(self.codes[-1]))
            self.codes.append(uniq.astype(np.int64))
            self.counts.append(cnt)
            self.ctx.append(ctx)
            self.dense.append(dense)
            key = codes if dense else inv.ravel().astype(np.int64)

    def distinct(self, n: int) -> int:
        return len(self.codes[n - 1])

    def decode(self, n: int, code: int) -> tuple[int, ...]:
        """The token indices of the n-gram with this code."""
        tokens = []
        for o in range(n, 1, -1):
            tokens.append(int(code % self.V))
            key = int(code // self.V)
            code = key if self.dense[o - 2] else int(self.codes[o - 2][key])
        tokens.append(int(code))
        return tuple(reversed(tokens))

    def top(self, n: int, m: int = 10) -> list[tuple[tuple[int, ...], int]]:
        """The m most frequent n-grams (ties in token order) with their counts."""
        order = np.argsort(-self.counts[n - 1], kind="stable")[:m]
        return [(self.decode(n, self.codes[n - 1][j]), int(self.counts[n - 1][j])) for j in order]

    def _find(self, o: int, codes: np.ndarray) -> np.ndarray:
        """Rank of each o-gram code among the training o-grams, -1 where unseen (or code < 0)."""
        uniq = self.codes[o - 1]
        if len(uniq) == 0:
            return np.full(len(codes), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(uniq, codes), len(uniq) - 1)
        return np.where((codes >= 0) & (uniq[pos] == codes), pos, -1)

    def _walk(self, ids, max_n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per order: the training rank of the o-gram at each position (-1: unseen) and its key."""
        ids = _as_ids(ids)
        ranks, keys, key = [], [], ids
        for o in range(1, max_n + 1):
            m = max(len(ids) - o + 1, 0)
            codes = ids if o == 1 else np.where(key[:m] >= 0, key[:m] * self.V + ids[o - 1 :], -1)
            rank = self._find(o, codes)
            key = codes if self.dense[o - 1] else rank
            ranks.append(rank)
            keys.append(key)
        return ranks, keys

    def ranks(self, ids, max_n: int) -> list[np.ndarray]:
        """For o = 1..max_n: the training rank of the o-gram starting at each position of `ids`
        (length len(ids) - o + 1), -1 where that o-gram never occurs in training."""
        return self._walk(ids, max_n)[0]

    def lookup(self, o: int, ranks: np.ndarray, table: str = "counts") -> np.ndarray:
        """counts (or ctx) at the given ranks; 0 where rank is -1."""
        arr = getattr(self, table)[o - 1]
        if len(arr) == 0:
            return np.zeros(len(ranks), dtype=np.int64)
        return np.where(ranks >= 0, arr[np.maximum(ranks, 0)], 0)

    def scored_counts(self, ids, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(#(context, w), #context) for every scored position 1..L-1 of `ids` under order n."""
        if not 1 <= n <= self.max_n:
            raise ValueError(f"n={n} must be in 1..{self.max_n} (the counted orders)")
        ids = _as_ids(ids)
        L = len(ids)
        ranks = self.ranks(ids, n)
        cs, ccs = [], []
        for i in range(1, min(n - 1, L)):  # the first positions have a shorter history
            cs.append(self.lookup(i + 1, ranks[i][:1]))
            ccs.append(self.lookup(i + 1, ranks[i - 1][:1], "ctx"))
        s0 = max(n - 1, 1) - n + 1  # start of the first full n-gram that is scored
        cs.append(self.lookup(n, ranks[n - 1][s0:]))
        ctx = (np.full(max(L - n + 1 - s0, 0), self.ctx[0][0]) if n == 1 else
               self.lookup(n, ranks[n - 2][s0 : L - n + 1], "ctx"))
        ccs.append(ctx)
        return np.concatenate(cs), np.concatenate(ccs)


def addk_perplexity(c: np.ndarray, cc: np.ndarray, k: float, vocab_size: int) -> float:
    """exp(-mean log P) with P = (c + k) / (cc + k V)."""
    if len(c) == 0:
        raise ValueError("nothing to score: a split needs at least 2 tokens")
    logp = np.log(c + k) - np.log(cc + k * vocab_size)
    return float(np.exp(-logp.mean()))


class AddKLM:
    """Laplace (k = 1) or add-k smoothed n-gram language model on top of `NGramCounts`."""

    def __init__(self, counts: NGramCounts, n: int, k: float = 1.0):
        if not 1 <= n <= counts.max_n:
            raise ValueError(f"n={n} must be in 1..{counts.max_n} (the counted orders)")
        if not k > 0:
            raise ValueError(f"k={k} must be > 0 (k = 0 gives unseen n-grams probability 0)")
        self.counts, self.n, self.k, self.V = counts, n, float(k), counts.V

    def probs(self, context: Sequence[int] = ()) -> np.ndarray:
        """P(w | the last n-1 tokens of context) for every w in the vocabulary."""
        ctx = _as_ids(context)
        ctx = ctx[max(len(ctx) - (self.n - 1), 0) :]
        o = len(ctx) + 1
        words = np.arange(self.V, dtype=np.int64)
        if o == 1:
            cc, codes = self.counts.ctx[0][0], words
        else:
            ranks, keys = self.counts._walk(ctx, o - 1)
            cc = self.counts.lookup(o, ranks[o - 2], "ctx")[0]
            key = keys[o - 2][0]
            codes = key * self.V + words if key >= 0 else np.full(self.V, -1)
        c = self.counts.lookup(o, self.counts._find(o, codes))
        return (c + self.k) / (cc + self.k * self.V)

    def perplexity(self, ids) -> float:
        return addk_perplexity(*self.counts.scored_counts(ids, self.n), self.k, self.V)


def perplexity_table(counts: NGramCounts, splits: dict, orders: Sequence[int],
                     ks: Sequence[float]) -> list[dict]:
    """One row per (n, k) with the perplexity on each split; lookups are shared across k."""
    rows = {(n, k): {"n": int(n), "k": float(k)} for n in orders for k in ks}
    for name, ids in splits.items():
        for n in orders:
            c, cc = counts.scored_counts(ids, n)
            for k in ks:
                AddKLM(counts, n, k)  # validates n and k
                rows[n, k][f"{name}_ppl"] = addk_perplexity(c, cc, k, counts.V)
    return list(rows.values())


def zipf_fit(counts, rank_min: int = 1, rank_max: int | None = None,
             min_count: int = 1) -> dict:
    """Least squares of log frequency on log rank, f ~ C r^-s, over ranks rank_min..rank_max
    (1-based, clipped to the ranks whose count is >= min_count). Returns the exponent s > 0 for a
    falling curve, the intercept log C, the rank range actually used and R^2."""
    f = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    f = f[f > 0]
    hi = int((f >= min_count).sum())
    if rank_max is not None:
        hi = min(hi, int(rank_max))
    lo = max(int(rank_min), 1)
    if hi - lo + 1 < 2:
        raise ValueError(f"the Zipf fit needs at least 2 ranks, but ranks {lo}..{hi} hold "
                         f"{max(hi - lo + 1, 0)} ({len(f)} distinct n-grams, "
                         f"{int((f >= min_count).sum())} with count >= {min_count}); lower "
                         f"zipf.rank_min or zipf.min_count")
    x = np.log(np.arange(lo, hi + 1, dtype=np.float64))
    y = np.log(f[lo - 1 : hi])
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else 1.0
    return {"exponent": float(-slope), "intercept": float(intercept), "rank_min": lo,
            "rank_max": hi, "r2": r2}
