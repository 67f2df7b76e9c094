"""Kernel choices for the CPU fast path, made by timing the candidates on this machine.

    from rnnlab.kernels import choice as kernels
    kernels.configure(tanh="auto", matmul="auto", cache_dir="outputs/kernels")  # cfg.kernels
    kernels.keep({"tanh 32x512 float32 1 thread": "sigmoid"})  # a resumed run's recorded ones
    plus_matmul = kernels.step_matmul(W, rows=32, steps=35)  # (a, c, beta) -> beta c + a @ W
    use_sigmoid = kernels.tanh_via_sigmoid(z)                  # tanh(z) = 2 sigmoid(2z) - 1?
    low = kernels.recurrence_dtype(h, W, torch.bfloat16)      # under autocast: bf16 steps pay?
    logits = kernels.linear(outputs, head.weight, head.bias)
    with kernels.forced(tanh="sigmoid", matmul="onednn"): ...  # tests and benchmarks
    kernels.made()      # {"matmul 32x512x512 float32 1 thread": "torch", ...}, also logged
    kernels.resolve_precision("auto", "cpu")  # "bf16-mixed" on a CPU with AMX or AVX512-BF16

Which kernel is faster differs by CPU: tanh against sigmoid, and oneDNN's products against
MKL's addmm, win on one CPU and lose on another (docs/performance.md has the figures). So each
choice is timed the first time a shape needs it (interleaved rounds, median), cached per shape,
dtype and thread count, and logged. The plain torch path is always a candidate
and wins ties: another candidate must be at least 3% faster, more than the noise of a
measurement this short. Off the CPU and under torch.compile the plain path is used untimed.

A near-tie can flip with the machine's load, and the choices change rounding, so a choice is
made once and then kept (docs/performance.md): first a choice recorded by the run itself (a
resume, a relaunched or requeued job: `keep`, matched without the thread count), then the
machine's cache (rnnlab.kernels.cache, `cache_dir`), and only then a timing, stored there.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnlab.config import checks
from rnnlab.kernels import onednn
from rnnlab.kernels.cache import MachineCache

log = logging.getLogger(__name__)

CANDIDATES = {"tanh": ("tanh", "sigmoid"), "matmul": ("torch", "onednn", "contiguous"),
              "linear": ("torch", "onednn"), "recurrence_dtype": ("float32", "bfloat16")}
# the first of each is the plain torch path
MARGIN = 0.97  # a candidate replaces the plain path only if it takes < 97% of its time

_settings = {name: "auto" for name in CANDIDATES}
_cache: dict[tuple, str] = {}  # the choice per shape, dtype and thread count
_made: dict[str, str] = {}
_kept: dict[str, str] = {}  # recorded by the run: label without its thread count -> choice
_machine: list[MachineCache] = []  # the machine's cache, when configured with a cache_dir


def configure(cache_dir: str | None = None, retime: bool = False, **choices: str) -> None:
    """Set each choice (tanh, matmul, linear, recurrence_dtype) to `auto` (timed; the default
    for any not given) or force one of its candidates. `cache_dir`: the machine's cache of
    decisions (None: this process only); `retime`: time each shape again and overwrite it.
    `made()` and the kept choices start over; timings cached in this process stay unless
    retime."""
    _check(choices)
    _settings.update({name: choices.get(name, "auto") for name in CANDIDATES})
    _made.clear()
    _kept.clear()
    where = str(Path(cache_dir).resolve()) if cache_dir else None
    if retime or where != (str(_machine[0].folder.resolve()) if _machine else None):
        _cache.clear()  # this process's decisions came from another cache, or none
    _machine[:] = [MachineCache(cache_dir, retime)] if cache_dir else []


def _check(choices: dict[str, str]) -> None:
    for name in choices:
        if name not in CANDIDATES:
            raise ValueError(f"kernels.{name} is unknown; the choices are {list(CANDIDATES)}")
    for name in CANDIDATES:
        value = choices.get(name, "auto")
        if value != "auto" and value not in CANDIDATES[name]:
            raise ValueError(f"kernels.{name}={value!r} is unknown; use one of "
                             f"{['auto', *CANDIDATES[name]]}")
        if value == "onednn" and not onednn.AVAILABLE:
            raise ValueError(f"kernels.{name}=onednn: this torch is built without oneDNN; "
                             f"use auto or torch")


def base_label(label: str) -> str:
    """A label without its thread count: a recorded choice holds whatever the threads now."""
    return label.rsplit(" ", 2)[0] if label.endswith(("thread", "threads")) else label


def keep(recorded: dict[str, str]) -> None:
    """Use these choices (`made()` of an earlier part of this run) wherever they apply, before
    the machine's cache or a timing; a forced setting still wins. Unknown values are refused."""
    for label, value in recorded.items():
        value = str(value).removesuffix(" (forced)")
        name = label.split(" ", 1)[0]
        if name not in CANDIDATES or value not in CANDIDATES[name]:
            raise ValueError(f"recorded kernel choice {label!r}: {value!r} is not one of "
                             f"{list(CANDIDATES.get(name, ()))}")
        _kept[base_label(label)] = value


def machine_choices() -> dict[str, str]:
    """The decisions stored in the machine's cache ({} without one)."""
    return _machine[0].read() if _machine else {}


@contextlib.contextmanager
def forced(**choices: str) -> Iterator[None]:
    before = dict(_settings)
    _check(choices)
    _settings.update(choices)
    try:
        yield
    finally:
        _settings.update(before)


def made() -> dict[str, str]:
    """The choices used since `configure`, forced ones marked (summary.json, benchmarks)."""
    return dict(_made)


def _time(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call, candidates interleaved so a slow spell hits them all alike."""
    for fn in candidates.values():
        fn()  # warm-up: oneDNN builds its primitive, the allocator its buffers
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _choose(name: str, shape: str, tensor: torch.Tensor,
            candidates: Callable[[], dict[str, Callable[[], object]]], rounds: int = 5,
            extra: dict[str, float] | None = None, recorded_as: str | None = None) -> str:
    """The forced candidate, the plain one where timing does not apply, or the cached or newly
    timed winner for this shape. `extra` adds one-off seconds per call (a weight reorder);
    `recorded_as`: the shape a run recorded this choice under before `shape` was told apart."""
    plain, setting = CANDIDATES[name][0], _settings[name]
    if torch.compiler.is_compiling():
        return setting if setting != "auto" else plain
    threads, dtype = torch.get_num_threads(), str(tensor.dtype).removeprefix("torch.")
    label = f"{name} {shape} {dtype} {threads} thread{'s' * (threads > 1)}"
    if setting != "auto":
        _made[label] = f"{setting} (forced)"
        return setting
    if tensor.device.type != "cpu":
        return plain
    kept = _kept.get(base_label(label))
    if kept is None and recorded_as is not None:
        kept = _kept.get(f"{name} {recorded_as} {dtype}")
    if kept is not None:
        _made[label] = kept
        return kept
    key = (name, shape, tensor.dtype, threads)

    def time_it() -> str:
        with torch.no_grad():
            seconds = _time(candidates(), rounds)
        for other, s in (extra or {}).items():
            seconds[other] += s
        best = min(seconds, key=seconds.get)
        winner = best if seconds[best] < MARGIN * seconds[plain] else plain
        # the run's log file and summary.json["kernels"] have them; the console stays short
        log.debug("kernel choice: %s -> %s (%s)", label, winner,
                  ", ".join(f"{n} {1e6 * s:.0f} us" for n, s in seconds.items()))
        return winner

    if key not in _cache:
        _cache[key] = _machine[0].decide(label, time_it) if _machine else time_it()
        if _cache[key] not in CANDIDATES[name]:  # a hand-edited or foreign cache entry
            _cache[key] = time_it()
    _made[label] = _cache[key]
    return _cache[key]


def _random(*shape: int) -> torch.Tensor:
    """Operands for timing, drawn from a generator of their own: a timing in the middle of a run
    must not move the run's random streams (dropout, window lengths)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


# ---- the choices ------------------------------------------------------------------------------
def tanh_via_sigmoid(z: torch.Tensor) -> bool:
    """Whether the recurrence should compute tanh(z) as 2 sigmoid(2z) - 1 for z's shape."""
    out, minus_one = torch.empty_like(z), torch.full((), -1.0, dtype=z.dtype)
    reps = 10  # one call is a few microseconds: time ten

    def direct():
        for _ in range(reps):
            torch.tanh(z, out=out)

    def via_sigmoid():
        for _ in range(reps):
            torch.add(minus_one, torch.sigmoid(z), alpha=2, out=out)

    shape = "x".join(map(str, z.shape))
    return _choose("tanh", shape, z, lambda: {"tanh": direct, "sigmoid": via_sigmoid}) \
        == "sigmoid"


def _torch_step(W: torch.Tensor) -> Callable[..., torch.Tensor]:
    if W.dtype.itemsize >= 4:
        return lambda a, c, beta=1.0: torch.addmm(c, a, W, beta=beta)
    # a low-precision W (bf16): its product is rounded to W's dtype, the sum kept in c's
    return lambda a, c, beta=1.0: torch.mm(a, W).float().add_(c, alpha=beta)


def step_matmul(W: torch.Tensor, rows: int, steps: int = 1) -> Callable[..., torch.Tensor]:
    """`(a, c, beta=1) -> beta * c + a @ W` for a W that a loop of `steps` steps multiplies by,
    `rows` = a's rows. With a bf16 W (and a), c and the result stay float32. oneDNN reorders W
    once, charged to the `steps` of the pass that times the choice. For a transposed view (the
    backward pass's W_hh^T) there is a third candidate, `contiguous`: torch's product on a
    row-major copy of W, made once and charged alike (MKL multiplies by a transposed operand
    at another speed than by a row-major one, by how much depends on the CPU and the dtype:
    docs/performance.md). A transposed W has its own label ("... transposed ..."); a run
    recorded before it existed keeps the choice it made for its untransposed shape.
    Not differentiable: for use inside hand-written forward/backward passes."""
    if not onednn.applies(W, dtypes=(torch.float32, torch.bfloat16)):
        return _torch_step(W)
    transposed = W.dim() == 2 and not W.is_contiguous() and W.T.is_contiguous()
    once: dict[str, float] = {}

    def candidates():
        a = _random(rows, W.shape[0]).to(W.dtype)
        c = _random(rows, W.shape[1])
        t0 = time.perf_counter()
        packed = onednn.step_matmul(W, rows)
        once["onednn"] = (time.perf_counter() - t0) / steps
        plain = _torch_step(W)
        out = {"torch": lambda: plain(a, c), "onednn": lambda: packed(a, c)}
        if transposed:
            t0 = time.perf_counter()
            copy = _torch_step(W.contiguous())
            once["contiguous"] = (time.perf_counter() - t0) / steps
            out["contiguous"] = lambda: copy(a, c)
        return out

    shape = f"{rows}x{W.shape[0]}x{W.shape[1]}"
    choice = _choose("matmul", shape + " transposed" if transposed else shape, W, candidates,
                     extra=once, recorded_as=shape if transposed else None)
    if choice == "onednn":
        return onednn.step_matmul(W, rows)
    return _torch_step(W.contiguous() if choice == "contiguous" else W)


def recurrence_dtype(h: torch.Tensor, W: torch.Tensor, low: torch.dtype) -> torch.dtype:
    """`low` (autocast's bf16) or h's float32 for the recurrence's products: a bf16 step also
    copies its state to bf16 and its product back, which a small product (evaluation reads one
    stream, B = 1) does not pay for. Timed as a step forward and backward and its share of the
    W_hh gradient, in each dtype."""
    if low == h.dtype or not onednn.applies(h):
        return low
    rows, (K, N) = len(h), W.shape
    out = torch.empty(rows, N)

    def candidates():
        a, c, W32 = _random(rows, K), _random(rows, N), W.detach().float()
        a_low, W_low = a.to(low), W32.to(low)
        step32, step_low = _torch_step(W32), _torch_step(W_low)

        def float32():  # a step forward, one backward (alike), the step's share of dW_hh
            for _ in range(2):
                torch.tanh(step32(a, c), out=out)
            return a.T @ out

        def bfloat16():
            for _ in range(2):
                a_low.copy_(torch.tanh(step_low(a_low, c), out=out))
            return a_low.T @ a_low

        return {"float32": float32, "bfloat16": bfloat16}

    shape = f"{rows}x{K}x{N}"
    choice = _choose("recurrence_dtype", shape, h, candidates, rounds=7)
    return low if choice == "bfloat16" else h.dtype


def _bucket(n: int) -> int:
    """Rows rounded up to a power of two: randomized BPTT windows vary N at every step, and
    one timing per length would add up."""
    return 1 << max(0, n - 1).bit_length()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight, bias) for a 2-d x, through oneDNN where that is measured faster (the
    forward product and the input gradient's are what differ)."""
    if not (onednn.applies(x, weight, bias) and x.dim() == 2):
        return F.linear(x, weight, bias)

    def candidates():
        xc, grad = x.detach().contiguous(), _random(len(x), len(weight))
        wt = weight.detach().T.contiguous()
        lin = torch.ops.mkldnn._linear_pointwise
        return {"torch": lambda: (F.linear(xc, weight, bias), grad @ weight),
                "onednn": lambda: (lin(xc, weight, bias, "none", [], ""),
                                   lin(grad, wt, None, "none", [], ""))}

    shape = f"{_bucket(len(x))}x{weight.shape[1]}x{weight.shape[0]}"
    if _choose("linear", shape, x, candidates, rounds=3) == "onednn":
        return onednn.linear(x, weight, bias)
    return F.linear(x, weight, bias)


# ---- threads for one stream ---------------------------------------------------------------------
@contextlib.contextmanager
def stream_threads(rows: int, device: torch.device | str) -> Iterator[None]:
    """One thread while scoring `rows` <= 1 stream on a CPU, the count before restored after.
    One stream's step is a (1 x H) @ (H x H) product that reads all of W_hh for H^2 multiply-adds:
    split across threads, each step pays OpenMP's fork and join, and on a machine shared with
    other work one descheduled thread stalls every step (docs/performance.md has the figures)."""
    before = torch.get_num_threads()
    one = rows <= 1 and torch.device(device).type == "cpu" and before > 1
    if one:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if one:
            torch.set_num_threads(before)


# ---- precision --------------------------------------------------------------------------------
def bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16) and oneDNN can run
    bf16 on it (config.checks: /proc/cpuinfo's flags; torch's own checks where there are none)."""
    flags = checks.cpu_flags()
    if flags is not None and "sse2" in flags:
        return checks.bf16_units(flags)
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without these checks, or not an x86 build
        return False


def resolve_precision(precision: str | int, accelerator: str) -> str | int:
    """`trainer.precision`: `auto` is bf16-mixed on a CPU with bf16 matrix units (float32 master
    weights, loss and sums; products in bf16), 32-true elsewhere; other values pass through,
    except bf16 on a CPU that cannot run it: a ConfigError naming what the CPU lacks (one line,
    not oneDNN's traceback at the first step)."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if precision == "auto":
        return "bf16-mixed" if on_cpu and bf16_matrix_units() else "32-true"
    if on_cpu:
        checks.precision(precision, "cpu")
    return precision
