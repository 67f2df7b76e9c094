"""Benchmarks, side by side in one run: training throughput, data preparation, start-up.

    python benchmarks/bench.py                    # the full table (several minutes on 2 cores)
    python benchmarks/bench.py --quick            # seconds: tiny sizes, checks the machinery
    python benchmarks/bench.py --device cuda      # the same on a GPU
    python benchmarks/bench.py --only train --batch-sizes 32 --threads 1
    python benchmarks/bench.py --only train --precision 32-true --kernel tanh=sigmoid  # force one

Throughput is tokens/s after warm-up, median (min-max) over repetitions, for
- `book`: the book's loop written plainly (one-hot input, per-step output layer, hand clipping,
  a manual SGD update), kept here as the reference every ratio is taken against;
- each model (`rnn_scratch` fast and book mode, `rnn`, `rnn` on nn.RNN's own CPU kernel, `gru`,
  `lstm`) through the real Lightning training step with logging on, and the same module in a
  plain PyTorch loop, so the Lightning overhead is a ratio from the same run;
- each model again in bf16 autocast (`+bf16` rows), by default where the CPU has bf16 matrix
  units (AMX, AVX512-BF16); the book loop stays float32, the reference.
It prints the CPU model and the kernel choices `kernels.choice` timed (or was forced to make).
Results go to stdout (a table) and to a JSON file (--out, default outputs/bench.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import torch  # noqa: E402
from loops import (  # noqa: E402  (this folder, first on sys.path when run as a script)
    COMPILE_LABELS,
    MODELS,
    PRECISION_LABELS,
    batches,
    bench_book,
    bench_lightning,
    bench_plain,
    make_model,
)

from rnnlab.kernels import choice as kernels  # noqa: E402
from rnnlab.training.run import keep_freed_memory  # noqa: E402


def corpus_tensor(quick: bool) -> tuple[torch.Tensor, int]:
    from rnnlab.text.vocab import encode_corpus, preprocess

    path = ROOT / "outputs" / "data" / "timemachine.txt"
    if path.is_file():
        ids, vocab = encode_corpus(preprocess(path.read_text(), "letters"), "char")
        return ids.long(), len(vocab)
    g = torch.Generator().manual_seed(0)  # without the corpus: uniform tokens, same shapes
    return torch.randint(0, 28, (20_000 if quick else 200_000,), generator=g), 28


def bench_training(args) -> list[dict]:
    """Every contender runs `reps` rounds, interleaved (book, model A plain, model A Lightning,
    ..., then again), so a slow spell of a shared machine hits them all alike; the ratios to the
    book loop and Lightning's overhead are taken within each round, then their median."""
    corpus, vocab = corpus_tensor(args.quick)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for bs in args.batch_sizes:
            # the same token budget per batch size, but at least 4 timed steps a round (noise)
            per_round = max(4, args.steps * 32 // max(bs, 32) // args.reps)
            data = batches(corpus, bs, args.num_steps, per_round + args.warmup, "cpu")
            dev_data = [(x.to(args.device), y.to(args.device)) for x, y in data]
            runs = {("book_reference", "plain"): partial(
                bench_book, dev_data, vocab, args.hidden, args.warmup, args.device)}
            for name, precision in itertools.product(args.models, args.precision):
                modes = [None]
                if args.compile and "scratch" in name:  # CUDA graphs only exist on a GPU
                    modes += ["default"] + ["reduce-overhead"] * args.device.startswith("cuda")
                for mode in modes:
                    label = name + COMPILE_LABELS.get(mode, "") + PRECISION_LABELS[precision]
                    for loop, fn, batches_ in (("plain", bench_plain, dev_data),
                                               ("lightning", bench_lightning, data)):
                        torch.manual_seed(0)  # one model per contender, trained on across rounds
                        model = make_model(name, vocab, args.hidden, mode)
                        runs[(label, loop)] = partial(fn, model, batches_, args.warmup,
                                                      args.device, mode == "reduce-overhead",
                                                      precision)
            rates = {key: [] for key in runs}
            for _ in range(args.reps):
                for key, run in list(runs.items()):
                    try:
                        times = run()
                    except Exception as e:  # a compile that fails is a result, not a crash
                        if not any(tag in key[0] for tag in COMPILE_LABELS.values()):
                            raise
                        print(f"  {key[0]} {key[1]}: failed: {type(e).__name__}: {e}"[:300])
                        del runs[key], rates[key]
                        continue
                    rates[key].append(bs * args.num_steps * len(times) / sum(times))
            book = rates[("book_reference", "plain")]
            for (name, loop), per_round in rates.items():
                row = {"model": name, "loop": loop, "batch_size": bs, "threads": threads,
                       "device": args.device, "median": statistics.median(per_round),
                       "min": min(per_round), "max": max(per_round), "reps": len(per_round),
                       "vs_book": statistics.median(r / b for r, b in zip(per_round, book))}
                plain = rates.get((name, "plain"))
                if loop == "lightning" and plain:
                    row["lightning_overhead"] = statistics.median(
                        p / r - 1 for p, r in zip(plain, per_round))
                rows.append(row)
                print(f"  {name:18s} {loop:9s} bs={bs:<4d} threads={threads} "
                      f"{row['median']:>9,.0f} tok/s ({row['min']:,.0f}-{row['max']:,.0f})",
                      flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Per model and setting, through Lightning: the ratio to the book loop and the overhead."""
    return [{"model": r["model"], "batch_size": r["batch_size"], "threads": r["threads"],
             "vs_book": r["vs_book"], "lightning_overhead": r.get("lightning_overhead")}
            for r in rows if r["loop"] == "lightning"]


DATA_PREP = """
import re, resource, sys, time, torch
from rnnlab.text.vocab import encode_corpus, preprocess
def peak_kb():  # this process's own high-water mark (ru_maxrss also counts the parent at fork)
    try:
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = peak_kb()
t0 = time.perf_counter()
with open(sys.argv[1], encoding="utf-8") as f:
    text = f.read()
t1 = time.perf_counter()
text = preprocess(text, "letters")
t2 = time.perf_counter()
ids, vocab = encode_corpus(text, sys.argv[2], 0.9)
t3 = time.perf_counter()
peak = peak_kb()
print(t1 - t0, t2 - t1, t3 - t2, t3 - t0, base * 1024, peak * 1024, len(ids), len(vocab),
      ids.dtype, ids.element_size())
"""


def bench_data(args) -> list[dict]:
    """Read, preprocess, tokenise, build the vocabulary, encode: a repeated Time Machine."""
    src = ROOT / "outputs" / "data" / "timemachine.txt"
    seed = src.read_text() if src.is_file() else "the time machine by h g wells " * 6000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.txt"
        reps = max(1, int(args.data_mb * 1e6 / len(seed)))
        big.write_text(seed * reps)
        for token in ("char", "word"):
            out = subprocess.run([sys.executable, "-c", DATA_PREP, str(big), token], check=True,
                                 capture_output=True, text=True).stdout.split()
            read, prep, enc, total, base, peak = map(float, out[:6])
            row = {"token": token, "mb": big.stat().st_size / 1e6, "read_s": read,
                   "preprocess_s": prep, "tokenize_vocab_encode_s": enc, "total_s": total,
                   "peak_rss_gb": peak / 2**30, "rss_after_imports_gb": base / 2**30,
                   "tokens": int(out[6]), "vocab": int(out[7]), "dtype": out[8]}
            rows.append(row)
            print(f"  data {token:4s} {row['mb']:.0f} MB: {total:.2f} s (read {read:.2f}, "
                  f"preprocess {prep:.2f}, encode {enc:.2f}), peak RSS {row['peak_rss_gb']:.2f} "
                  f"GB ({row['rss_after_imports_gb']:.2f} after imports), {out[8]}", flush=True)
    return rows


def bench_startup(args) -> dict:
    """Seconds from launching `python scripts/train.py` to its first training step."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "train.py"), "+trainer.max_steps=2",
             "+trainer.limit_val_batches=0", "test=false", "trainer.accelerator=cpu",
             f"hydra.run.dir={tmp}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        first = None
        for line in proc.stdout:
            if first is None and "first training step" in line:
                first = time.perf_counter() - t0
        proc.wait()
        total = time.perf_counter() - t0
    if first is None:
        raise RuntimeError(f"train.py never reached its first step (exit {proc.returncode})")
    print(f"  start-up to first training step: {first:.2f} s (whole 2-step run {total:.2f} s)")
    return {"to_first_step_s": first, "two_step_run_s": total}


def cpu_model() -> str:
    """lscpu's "Model name" (the figure's CPU), or what Python knows without lscpu."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name:"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it all runs")
    p.add_argument("--only", choices=["train", "data", "startup"], action="append")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--num-steps", type=int, default=35)
    p.add_argument("--steps", type=int, default=56,
                   help="measured steps at batch 32 (fewer at larger batches)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps in each round")
    p.add_argument("--reps", type=int, default=7, help="interleaved rounds per contender")
    p.add_argument("--data-mb", type=float, default=100)
    p.add_argument("--compile", action="store_true", help="also torch.compile the scratch cores "
                   "(and, on a GPU, as CUDA graphs)")
    p.add_argument("--precision", nargs="+", choices=list(PRECISION_LABELS),
                   default=["32-true"] + ["bf16-mixed"] * kernels.bf16_matrix_units(),
                   help="bf16-mixed by default where the CPU has AMX or AVX512-BF16")
    p.add_argument("--kernel", action="append", default=[], metavar="NAME=VALUE",
                   help="force a kernel choice, e.g. tanh=sigmoid (kernels.choice; default auto)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench.json")
    args = p.parse_args()
    kernels.configure(**dict(k.split("=", 1) for k in args.kernel))
    if args.quick:
        print("--quick: tiny sizes that check the machinery; its numbers mean nothing")
        args.batch_sizes, args.threads, args.hidden = [8], [1], 32
        args.steps, args.warmup, args.reps, args.data_mb = 6, 2, 2, 1
    if args.device.startswith("cuda"):
        args.threads = args.threads[:1]
    only = set(args.only or ["train", "data", "startup"])
    keep_freed_memory()  # as train.py does; every contender runs in this one process
    cpu = cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} cores; bf16 matrix units: "
          f"{'yes' if kernels.bf16_matrix_units() else 'no'}), torch {torch.__version__}")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": cpu, "machine":
              platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "bf16_matrix_units": kernels.bf16_matrix_units(), "torch": torch.__version__,
              "device": args.device, "gpu": torch.cuda.get_device_name(0)
              if args.device.startswith("cuda") else None,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "only")}}
    if "train" in only:
        print("training throughput (tokens/s):", flush=True)
        result["training"] = bench_training(args)
        result["ratios"] = ratios(result["training"])
        result["kernels"] = kernels.made()
        print("kernel choices (rnnlab.kernels.choice):")
        for label, choice in result["kernels"].items():
            print(f"  {label}: {choice}")
        for r in result["ratios"]:
            over = r["lightning_overhead"]
            print(f"  {r['model']:18s} bs={r['batch_size']:<4d} threads={r['threads']}  "
                  f"{r['vs_book']:.2f}x book loop, Lightning overhead "
                  f"{'-' if over is None else f'{100 * over:+.1f}%'}")
    if "data" in only:
        print("data preparation:", flush=True)
        result["data"] = bench_data(args)
    if "startup" in only:
        result["startup"] = bench_startup(args)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
