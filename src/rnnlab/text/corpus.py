"""Corpus files: download and cache the Time Machine, or read any local UTF-8 text file.

    from rnnlab.text.corpus import resolve_corpus, read_text
    path = resolve_corpus(None, "outputs/data")      # downloads once, verifies sha1, caches
    text = read_text(path)

The cache never holds an unverified file under its final name: a download goes to a temp file in
the same directory and is renamed only after its sha1 matches, under a lock so that parallel sweep
jobs download it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from rnnlab.errors import CorpusError

TIME_MACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
TIME_MACHINE_NAME = "timemachine.txt"


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, dest: Path) -> None:
    """Stream `url` into `dest`. Replaceable in tests (monkeypatch) to simulate failures."""
    with urllib.request.urlopen(url, timeout=30) as response, open(dest, "wb") as out:
        for block in iter(lambda: response.read(1 << 16), b""):
            out.write(block)


def download(url: str, path: Path, sha1: str) -> Path:
    """Download `url` to `path` unless a verified copy is already there; returns `path`."""
    path = Path(path)
    if path.is_file() and sha1_of(path) == sha1:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.parent / f".{path.name}.lock", "w")  # noqa: SIM115 - held until return
    except OSError as e:
        raise CorpusError(
            f"cannot write the corpus cache {path.parent} ({e.strerror}); set data.data_dir=<a "
            f"writable dir> (or the DATA_DIR env var), or place the file at {path} yourself"
        ) from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel job may be downloading the same file
        if path.is_file():
            if sha1_of(path) == sha1:
                return path
            path.unlink()  # stale or tampered: never keep an unverified file under the final name
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp)
        except OSError as e:  # URLError, timeouts and refused connections are all OSErrors
            tmp.unlink(missing_ok=True)
            raise CorpusError(
                f"could not download {url} ({e}); without network, copy the file to {path} "
                f"(sha1 {sha1}) or train on a local file with data.path=/path/to/text.txt"
            ) from e
        got = sha1_of(tmp)
        if got != sha1:
            tmp.unlink(missing_ok=True)
            raise CorpusError(
                f"downloaded {url} has sha1 {got}, expected {sha1}; the partial file was deleted. "
                f"Retry, or place a verified copy at {path}"
            )
        os.replace(tmp, path)
    return path  # the lock file stays: deleting it could let two jobs hold different locks


def resolve_corpus(path: str | os.PathLike | None, data_dir: str | os.PathLike) -> Path:
    """The file to train on: `path` if given, else the cached (downloaded once) Time Machine."""
    if path is None:
        return download(TIME_MACHINE_URL, Path(data_dir) / TIME_MACHINE_NAME, TIME_MACHINE_SHA1)
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusError(f"data.path={path} does not exist; pass an existing UTF-8 text file")
    if path.is_dir():
        raise CorpusError(f"data.path={path} is a directory; pass a UTF-8 text file inside it")
    return path


def read_text(path: str | os.PathLike) -> str:
    """The whole file as text, with clear errors for binary or empty files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"data.path={path} is not UTF-8 text (byte {e.start}: {e.reason}); "
            f"convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from e
    except OSError as e:
        raise CorpusError(f"data.path={path} cannot be read ({e.strerror}); check its "
                          f"permissions or pass another file") from e
    if not text.strip():
        raise CorpusError(f"data.path={path} is empty; pass a file with text in it")
    return text
