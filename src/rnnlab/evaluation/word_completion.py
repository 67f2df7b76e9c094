"""A word n-gram read one character at a time: an expert for char models that knows whole words.

    expert = WordCompletion(train_ids, separator=vocab[" "], vocab_size=len(vocab), order=4)
    # discount 0.9 and floor 0.02: chosen on val with experiment=best (docs/results.md)
    logp, matched, prefix = expert.stream_log_probs(val_ids)  # (L-1, V), (L-1,), (L-1,)
    # counts grow as it reads; matched: a known word extends the prefix; prefix: its length

Text is cut into words at the separator token (the space). P(word | the order-1 words before it)
is an interpolated Kneser-Ney word n-gram: each order's counts less a discount, the rest of its
mass to the order below; below the top order a word counts the distinct words it followed
(continuation counts), so a word frequent only after one other word is rare elsewhere. A text's
first words have empty words (None) before them. The next character's distribution, given the
words before and the current word's prefix p, is the probability mass of the words that extend
p, split by the character that follows p in each (the separator for p itself):
P(c | p, h) = sum over words w = p c ... of P(w | h) / sum over words w = p ... of P(w | h).
A 10-gram of characters sees about two words back; this sees `order` - 1 whole words
and the whole current word however long they are. Where no known word extends p (a new word), it
says nothing: the uniform distribution, and `matched` is False there. A little uniform mass
(`floor`) keeps every probability above zero.

It adapts as it reads, like evaluation.adaptive_ngram: each word joins the counts (every order)
once its separator has been read, so the distribution of a token depends only on the tokens
before it. Each split starts from the training counts.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np


class WordCompletion:
    def __init__(self, ids, separator: int, vocab_size: int, order: int = 4,
                 discount: float = 0.9, floor: float = 0.02):
        if order < 1:
            raise ValueError(f"order={order} must be a positive integer")
        if not 0.0 < discount < 1.0 or not 0.0 < floor < 1.0:
            raise ValueError(f"discount={discount} and floor={floor} must lie in (0, 1)")
        self.sep, self.V, self.order = separator, vocab_size, order
        self.D, self.floor = discount, floor
        # counts[n][history of n-1 words][word] (continuation counts below the top order);
        # prefix_mass[p][c]: the unigram continuation counts of the words that extend the prefix
        # p with the character c (the separator: p is the word)
        self.counts = [None] + [defaultdict(Counter) for _ in range(order)]
        self.totals = [None] + [Counter() for _ in range(order)]
        self.prefix_mass: dict[tuple, np.ndarray] = {}
        history = self._start()
        for word in self._words(ids):
            self.add(history, word)
            history.append(word)

    def _start(self) -> list:
        return [None] * (self.order - 1)  # what precedes a text's first word

    def _words(self, ids) -> list[tuple]:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        words, current = [], []
        for i in ids:
            if i == self.sep:
                if current:
                    words.append(tuple(current))
                current = []
            else:
                current.append(int(i))
        if current:
            words.append(tuple(current))
        return words

    def add(self, history: list, word: tuple) -> None:
        """Count `word` after `history`: at the top order always; at each order below only when
        the order above saw this word after this context for the first time (a new left
        extension). The unigram continuation counts feed the prefixes' masses."""
        for n in range(self.order, 0, -1):
            ctx = tuple(history[len(history) - (n - 1):]) if n > 1 else ()
            table = self.counts[n][ctx]
            first = table[word] == 0
            table[word] += 1
            self.totals[n][ctx] += 1
            if n == 1:
                for k in range(len(word) + 1):
                    mass = self.prefix_mass.get(word[:k])
                    if mass is None:
                        mass = self.prefix_mass[word[:k]] = np.zeros(self.V)
                    mass[word[k] if k < len(word) else self.sep] += 1.0
            if not first:
                break

    def _extend(self, word: tuple, prefix: tuple) -> int | None:
        n = len(prefix)
        if word[:n] != prefix:
            return None
        return word[n] if len(word) > n else self.sep

    def probs(self, history: list, prefix: tuple) -> tuple[np.ndarray, bool]:
        """P(next token | the words before, the current word's prefix); whether a known word
        extends the prefix."""
        mass = np.zeros(self.V)
        weight = 1.0  # what the orders above have left to this one
        for n in range(self.order, 1, -1):
            ctx = tuple(history[len(history) - (n - 1):])
            total = self.totals[n].get(ctx, 0)
            if not total:
                continue
            followers = self.counts[n][ctx]
            for word, k in followers.items():
                c = self._extend(word, prefix)
                if c is not None:
                    mass[c] += weight * (k - self.D) / total
            weight *= self.D * len(followers) / total
        unigram = self.prefix_mass.get(prefix)
        if unigram is not None:
            mass += weight * unigram / self.totals[1][()]
        total = mass.sum()
        if total <= 0.0:
            return np.full(self.V, 1.0 / self.V), False
        return (1.0 - self.floor) * mass / total + self.floor / self.V, True

    def stream_log_probs(self, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(L-1, V) log-probabilities of ids[1:], (L-1,) whether a known word extended the
        prefix and (L-1,) the prefix's length, reading ids in order and counting each finished
        word (training counts first)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if len(ids) < 2:
            raise ValueError("nothing to score: a split needs at least 2 tokens")
        saved = self._snapshot()
        history = self._start()
        current: list[int] = []
        out = np.empty((len(ids) - 1, self.V))
        matched = np.zeros(len(ids) - 1, dtype=bool)
        lengths = np.zeros(len(ids) - 1, dtype=np.int64)
        try:
            for t, i in enumerate(ids[:-1]):
                if i == self.sep:
                    if current:
                        self.add(history, tuple(current))
                        history.append(tuple(current))
                    current = []
                else:
                    current.append(int(i))
                p, matched[t] = self.probs(history, tuple(current))
                out[t], lengths[t] = np.log(p), len(current)
        finally:
            self._restore(saved)
        return out, matched, lengths

    # each split starts from the training counts: what a stream adds is undone after it
    def _snapshot(self):
        return ([None] + [{c: Counter(v) for c, v in self.counts[n].items()}
                          for n in range(1, self.order + 1)],
                [None] + [Counter(t) for t in self.totals[1:]],
                {p: m.copy() for p, m in self.prefix_mass.items()})

    def _restore(self, saved) -> None:
        counts, totals, prefix_mass = saved
        self.counts = [None] + [defaultdict(Counter, counts[n]) for n in range(1, self.order + 1)]
        self.totals, self.prefix_mass = totals, prefix_mass
