"""The corpora the claims' training runs read, derived once from the book into <out>/corpus/.

    from rnnlab.claims.texts import write_corpora
    write_corpora(out / "corpus", max_chars=20000, block=200, splits=(0.9, 0.05, 0.05))

forward.txt   the book after the book's preprocessing (letters), cut to max_chars;
reversed.txt  each split of forward.txt reversed in place: the same characters are held out, read
              backward (reversing the whole file would hold out the book's beginning instead);
shuffled.txt  forward.txt cut into blocks of `block` characters, shuffled with a fixed seed: its
              contiguous split is a random split of windows.
The files are written atomically and left alone when present with the same content, so a rerun
(or a resumed sweep, which compares configs, not files) sees the very same text.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from rnnlab.text.corpus import read_text, resolve_corpus
from rnnlab.text.vocab import preprocess


def book(data_dir: str | os.PathLike, max_chars: int | None = None) -> str:
    """The cached Time Machine, preprocessed as the chapter does, cut to max_chars."""
    text = preprocess(read_text(resolve_corpus(None, data_dir)), "letters")
    return text[:max_chars] if max_chars else text


def split_bounds(n: int, splits: Sequence[float]) -> tuple[int, int]:
    """(end of train, end of val): TextDataModule's arithmetic, for char tokens."""
    n_train, n_val = int(n * splits[0]), int(n * splits[1])
    return n_train, n_train + n_val


def reverse_splits(text: str, splits: Sequence[float]) -> str:
    a, b = split_bounds(len(text), splits)
    return text[:a][::-1] + text[a:b][::-1] + text[b:][::-1]


def shuffle_blocks(text: str, block: int, seed: int = 0) -> str:
    blocks = [text[i : i + block] for i in range(0, len(text), block)]
    random.Random(seed).shuffle(blocks)
    return "".join(blocks)


def _write(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_corpora(corpus_dir: Path, max_chars: int | None, block: int,
                  splits: Sequence[float], data_dir: str | os.PathLike | None = None) -> str:
    """Write forward/reversed/shuffled.txt into corpus_dir; returns the forward text."""
    corpus_dir.mkdir(parents=True, exist_ok=True)
    root = Path(os.environ.get("PROJECT_ROOT", Path(__file__).resolve().parents[3]))
    text = book(data_dir or os.environ.get("DATA_DIR", root / "outputs" / "data"), max_chars)
    _write(corpus_dir / "forward.txt", text)
    _write(corpus_dir / "reversed.txt", reverse_splits(text, splits))
    _write(corpus_dir / "shuffled.txt", shuffle_blocks(text, block))
    return text
