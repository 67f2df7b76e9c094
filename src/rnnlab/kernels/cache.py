"""The per-machine cache of kernel choices: one timing per machine, shared by every later run.

    from rnnlab.kernels.cache import MachineCache
    cache = MachineCache("outputs/kernels")            # kernels.cache_dir
    choice = cache.decide("tanh 32x512 float32 1 thread", time_it)  # time_it() -> winner
    cache.path    # outputs/kernels/kernels-<sha1 of the machine>.json

A choice timed in one process can come out differently in the next when the machine is busy
(a near-tie flips), and the choices change rounding, so two runs of one command would train two
models. The cache makes the timing happen once per machine: the file is named by the machine's
identity (CPU model and flags, torch version) and holds one entry per label, the label naming
the choice, its shape, dtype and thread count. An exclusive lock (fcntl.flock on a side file) is
held while an entry is read, timed and written, so parallel jobs of a sweep that need the same
shape wait for the first one's decision instead of timing it again each on its own.

Delete the file (or the folder), or run with `kernels.retime=true`, to time again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from rnnlab.config import checks

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the last writer wins (same decisions, timed twice)
    fcntl = None


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The first processor's model name (platform's guess where /proc/cpuinfo has none)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Environment variables that cap the instruction sets torch, MKL and oneDNN use: a process that
# sets one runs other kernels than the CPU's flags say (benchmarks/targets.py --isa avx2).
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def machine_key() -> str:
    """What decides which kernel wins, other than the shape and threads: the CPU, torch and any
    cap on the instruction sets (none set: the key is the CPU's and torch's alone)."""
    flags = " ".join(sorted(checks.cpu_flags() or ()))
    key = f"{cpu_model()} | {platform.machine()} | torch {torch.__version__} | {flags}"
    limits = " ".join(f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name))
    return f"{key} | {limits}" if limits else key


class MachineCache:
    """Decisions per label in one JSON file per machine under `folder`."""

    def __init__(self, folder: str | Path, retime: bool = False):
        self.folder, self.retime = Path(folder), retime
        digest = hashlib.sha1(machine_key().encode()).hexdigest()[:16]
        self.path = self.folder / f"kernels-{digest}.json"
        self._retimed: set[str] = set()  # labels this process timed again (retime=true)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> dict[str, str]:
        """Every decision stored for this machine ({} for none, or an unreadable file)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        choices = data.get("choices") if isinstance(data, dict) else None
        return {str(k): str(v) for k, v in choices.items()} if isinstance(choices, dict) else {}

    def _write(self, choices: dict[str, str]) -> None:
        tmp = self.path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"machine": machine_key(), "choices": choices}, indent=1,
                                  sort_keys=True))
        os.replace(tmp, self.path)

    def decide(self, label: str, time_it: Callable[[], str]) -> str:
        """The stored decision for `label`, or `time_it()`'s, stored for the next run. With
        retime, each label is timed again once in this process and overwritten."""
        with self._locked():
            choices = self.read()
            if label in choices and not (self.retime and label not in self._retimed):
                return choices[label]
            choices[label] = time_it()
            self._retimed.add(label)
            self._write(choices)
            return choices[label]
