"""Text to indices (D2L 8.2): preprocessing, char/word tokens, the Vocab, vectorised encoding.

    from rnnlab.text.vocab import preprocess, encode_corpus
    text = preprocess(raw, "letters")                  # the book's: non-letters -> ' ', lower-case
    text = preprocess(raw, "unicode_letters")          # the same, letters of any script kept
    ids, vocab = encode_corpus(text, "char", vocab_fraction=0.9)

`encode_corpus` never builds a Python list of per-token ints: characters go through numpy code-point
arrays, words through one dict lookup each, chunk by chunk, so a 100 MB corpus stays in memory
as one small-integer array.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from rnnlab.config.checks import PREPROCESS, TOKENS

UNK = "<unk>"


# byte -> lower-case letter, or space for everything else (every byte of a multi-byte UTF-8
# character is >= 0x80, so a non-ASCII character becomes spaces, i.e. a non-letter, as in D2L)
_LETTERS = bytes(c + 32 if 65 <= c <= 90 else c if 97 <= c <= 122 else 32 for c in range(256))


def _unicode_letters(text: str) -> str:
    """Letters of any script (Unicode categories L*, and the marks M* that some scripts write
    inside words), every other run of characters one space, lower-case."""
    others = sorted(c for c in set(text) if unicodedata.category(c)[0] not in "LM")
    if not others:
        return text.lower()
    return re.sub("[" + "".join(map(re.escape, others)) + "]+", " ", text).lower()


def kept_share(raw: str, text: str) -> float:
    """The share of the raw text's non-blank characters that preprocessing kept (1.0 for an
    all-blank text): `letters` keeps nearly all of English prose, little of other scripts."""
    blank = lambda t: sum(t.count(c) for c in " \n\t\r\f\v")
    before = len(raw) - blank(raw)
    return (len(text) - blank(text)) / before if before else 1.0


def preprocess(text: str, mode: str) -> str:
    """`letters`: every run of non-letters becomes one space, lower-case (D2L's
    `re.sub('[^A-Za-z]+', ' ', text).lower()`, vectorised over bytes): a-z only, so text in
    other scripts (or accents) disappears. `unicode_letters`: the same with the letters of any
    script (`Café 日本語` -> `café 日本語`). `none`: as is."""
    if mode == "unicode_letters":
        return _unicode_letters(text)
    if mode == "letters":
        codes = np.frombuffer(text.encode("utf-8").translate(_LETTERS), dtype=np.uint8)
        space = codes == 32
        keep = ~space
        keep[1:] |= ~space[:-1]  # a space stays only where the previous byte is a letter
        if len(keep):
            keep[0] = True
        return codes[keep].tobytes().decode("ascii")
    if mode == "none":
        return text
    raise ValueError(f"data.preprocess={mode!r} is unknown; use one of {list(PREPROCESS)}")


def tokenize(text: str, token: str) -> list[str]:
    """Small-text tokenizer (for prefixes and tests); `encode_corpus` handles whole corpora."""
    if token == "char":
        return list(text)
    if token == "word":
        return text.split()
    raise ValueError(f"data.token={token!r} is unknown; use one of {list(TOKENS)}")


def join_tokens(tokens: Sequence[str], token: str) -> str:
    return "".join(tokens) if token == "char" else " ".join(tokens)


class Vocab:
    """Token <-> index. `<unk>` is 0, then reserved tokens in the given order, then the tokens
    with count >= min_freq by descending count (ties broken by the token itself)."""

    def __init__(
        self,
        tokens: Iterable[str] = (),
        min_freq: int = 0,
        reserved_tokens: Sequence[str] = (),
        counts: dict[str, int] | None = None,
    ):
        counter = Counter(tokens) if counts is None else Counter(counts)
        self.token_freqs = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        self.min_freq = min_freq
        self.reserved_tokens = list(reserved_tokens)
        specials = [UNK] + [t for t in self.reserved_tokens if t != UNK]
        taken = set(specials)
        self.idx_to_token = specials + [
            t for t, f in self.token_freqs if f >= min_freq and t not in taken
        ]
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        return [self[t] for t in tokens]

    def to_tokens(self, indices: int | Sequence[int]) -> str | list[str]:
        if isinstance(indices, (int, np.integer)):
            return self.idx_to_token[int(indices)]
        return [self.idx_to_token[int(i)] for i in indices]

    @property
    def unk(self) -> int:
        return 0

    def to_dict(self) -> dict:
        return {
            "idx_to_token": self.idx_to_token,
            "token_freqs": self.token_freqs,
            "min_freq": self.min_freq,
            "reserved_tokens": self.reserved_tokens,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        vocab = cls(counts=dict(d["token_freqs"]), min_freq=d["min_freq"],
                    reserved_tokens=d["reserved_tokens"])
        if vocab.idx_to_token != list(d["idx_to_token"]):
            raise ValueError("vocab dict is inconsistent: idx_to_token does not match its counts")
        return vocab

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.to_dict() == other.to_dict()


def index_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer type that holds every index (uint8 for the 28 characters)."""
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 2**15:
        return torch.int16
    return torch.int32


def _char_codes(text: str) -> np.ndarray:
    if text.isascii():  # one byte per character: 4x less memory than code points
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def _word_codes(text: str, chunk_chars: int = 1 << 23) -> tuple[np.ndarray, list[str]]:
    """Word ids in first-seen order, built chunk by chunk to bound the size of the word lists."""
    ids: dict[str, int] = {}
    parts, start = [], 0
    while start < len(text):
        end = min(start + chunk_chars, len(text))
        while end < len(text) and not text[end].isspace():
            end += 1  # never split a word across chunks
        words = text[start:end].split()
        parts.append(np.fromiter((ids.setdefault(w, len(ids)) for w in words),
                                 dtype=np.int64, count=len(words)))
        start = end
    codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return codes, list(ids)


def encode_corpus(
    text: str,
    token: str,
    vocab_fraction: float = 1.0,
    min_freq: int = 0,
    reserved_tokens: Sequence[str] = (),
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, Vocab]:
    """The corpus as one flat index tensor and the Vocab counted on its first `vocab_fraction`
    of tokens (the training split), so held-out text never shapes the vocabulary."""
    if token == "char":
        codes = _char_codes(text)
        if max_tokens is not None:
            codes = codes[:max_tokens]
        n_vocab = max(1, int(len(codes) * vocab_fraction))
        counts_arr = np.bincount(codes[:n_vocab], minlength=1)
        present = np.flatnonzero(counts_arr)
        counts = {chr(c): int(counts_arr[c]) for c in present}
        vocab = Vocab(counts=counts, min_freq=min_freq, reserved_tokens=reserved_tokens)
        table_size = max(int(codes.max()) + 1 if len(codes) else 1, len(counts_arr))
        table = np.zeros(table_size, dtype=np.int64)
        for c in present:
            table[c] = vocab[chr(c)]
    elif token == "word":
        codes, words = _word_codes(text)
        if max_tokens is not None:
            codes = codes[:max_tokens]
        n_vocab = max(1, int(len(codes) * vocab_fraction))
        counts_arr = np.bincount(codes[:n_vocab], minlength=len(words))
        counts = {words[i]: int(counts_arr[i]) for i in np.flatnonzero(counts_arr)}
        vocab = Vocab(counts=counts, min_freq=min_freq, reserved_tokens=reserved_tokens)
        table = np.fromiter((vocab[w] for w in words), dtype=np.int64, count=len(words))
        table[counts_arr == 0] = vocab.unk  # words seen only in held-out text are unknown
    else:
        raise ValueError(f"data.token={token!r} is unknown; use one of {list(TOKENS)}")
    dtype = index_dtype(len(vocab))
    np_dtype = {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32}[dtype]
    ids = table.astype(np_dtype)[codes]
    return torch.from_numpy(ids), vocab
