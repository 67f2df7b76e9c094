"""`scripts/train.py` beside the programs users compare it with, in one run, same shapes and data,
with the ratios and the CPU's name: pytorch/examples' word_language_model loop
(`peer_examples.py`) for `rnn` and `lstm`, the book's RNN from scratch (`peer_book.py`) for
`rnn_scratch`.

    python benchmarks/peers.py                 # all three; 1- and 3-epoch runs, 2 repeats
    python benchmarks/peers.py --models lstm --repeats 3 --out benchmarks/results/<cpu>_peers.json
    python benchmarks/peers.py --quick         # tiny sizes, checks the machinery

Shapes (the issue's): the Time Machine as characters, 512 hidden, one layer, batch 32, 35 steps,
SGD at lr 1, clipping at 1, no dropout, float32, `--threads` (1) threads; a 64-d embedding for
`rnn` and `lstm`, one-hot inputs for `rnn_scratch`. Ours is `scripts/train.py model=<m>
[model.embedding_dim=64] trainer.precision=32-true` with every default callback (checkpoints,
samples, the gradient probe) as a user runs it; pytorch/examples evaluates on 10 streams, ours on
one (exact, every token with its whole history); the book's program evaluates nothing.

Both contenders run as separate processes, interleaved (ours short, peer short, ours long, peer
long, then the next repeat), so a slow spell of a shared machine hits both. Per contender:
- training tokens/s: each reports its own (time inside training steps only), from the long run;
- end to end: the training tokens of the long run minus the short run's over the difference of
  their wall times, so start-up, imports and what runs once (the probe at start and end, the
  test) cancel and what remains is the per-epoch cost: training, validation, checkpoints,
  logging. The same from the processes' CPU time (user + system) is printed beside it: on a
  machine shared with other work it is the steadier of the two.
Ratios (ours / peer) are taken within each repeat, then their median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = {"rnn": "pytorch examples", "lstm": "pytorch examples", "rnn_scratch": "the book"}


def cpu_name() -> str:
    """lscpu's model name with its family and model numbers (two CPUs may share a name)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        import platform

        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = lambda key: fields.get(key, "").strip()  # noqa: E731
    return f"{get('Model name')} (family {get('CPU family')} model {get('Model')})"


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd`; (wall seconds, CPU seconds of the child). Fails loudly with its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def ours(model: str, epochs: int, work: Path, args) -> dict:
    run_dir = work / f"ours_{model}_{epochs}_{time.monotonic_ns()}"
    # rnn_scratch reads one-hot inputs, as the book's program does; the others a 64-d embedding
    embedding = [] if model == "rnn_scratch" else ["model.embedding_dim=64"]
    cmd = [sys.executable, "scripts/train.py", f"model={model}", *embedding,
           f"model.core.num_hiddens={args.hidden}", "trainer.precision=32-true",
           f"trainer.max_epochs={epochs}", f"torch_threads={args.threads}",
           f"hydra.run.dir={run_dir}"]
    if args.max_tokens:
        cmd.append(f"data.max_tokens={args.max_tokens}")
    wall, cpu = timed(cmd)
    s = json.loads((run_dir / "summary.json").read_text())
    return {"wall": wall, "cpu": cpu, "tokens": s["global_step"] * 32 * 35,
            "tokens_per_s": s["tokens_per_s"], "best_val_ppl": s["best_val_ppl"],
            "test_ppl": s["test_ppl"]}


def peer(model: str, epochs: int, work: Path, args) -> dict:
    out = work / f"peer_{model}_{epochs}_{time.monotonic_ns()}.json"
    program = ["benchmarks/peer_book.py"] if model == "rnn_scratch" else \
        ["benchmarks/peer_examples.py", "--model", model]
    cmd = [sys.executable, *program, "--epochs", str(epochs), "--hidden", str(args.hidden),
           "--threads", str(args.threads), "--out", str(out)]
    if args.max_tokens:
        cmd += ["--max-tokens", str(args.max_tokens)]
    wall, cpu = timed(cmd)
    s = json.loads(out.read_text())
    return {"wall": wall, "cpu": cpu, "tokens": s["train_tokens"],
            "tokens_per_s": s["tokens_per_s"], "best_val_ppl": s.get("best_val_ppl", math.nan),
            "test_ppl": s.get("test_ppl", math.nan)}  # the book's program has no held-out text


def per_epoch_rate(short: dict, long: dict, clock: str) -> float:
    """NaN where the long run took no longer (runs too short for this machine's noise)."""
    seconds = long[clock] - short[clock]
    return (long["tokens"] - short["tokens"]) / seconds if seconds > 0 else float("nan")


def compare(model: str, work: Path, args) -> dict:
    runs = {"ours": [], "peer": []}
    for rep in range(args.repeats):
        pair = {}
        for epochs in (args.short, args.long):
            for name, fn in (("ours", ours), ("peer", peer)):
                pair.setdefault(name, []).append(fn(model, epochs, work, args))
        for name, (short, long) in pair.items():
            runs[name].append({"short": short, "long": long,
                               "end_to_end": per_epoch_rate(short, long, "wall"),
                               "end_to_end_cpu": per_epoch_rate(short, long, "cpu")})
        o, p = runs["ours"][-1], runs["peer"][-1]
        print(f"  {model} repeat {rep + 1}: training {o['long']['tokens_per_s']:,.0f} vs "
              f"{p['long']['tokens_per_s']:,.0f} tok/s, end to end {o['end_to_end']:,.0f} vs "
              f"{p['end_to_end']:,.0f} (CPU time {o['end_to_end_cpu']:,.0f} vs "
              f"{p['end_to_end_cpu']:,.0f}); val ppl {o['long']['best_val_ppl']:.3f} vs "
              f"{p['long']['best_val_ppl']:.3f}", flush=True)
    pairs = list(zip(runs["ours"], runs["peer"]))
    ratio = lambda f: statistics.median(f(o) / f(p) for o, p in pairs)  # noqa: E731
    return {"model": model, "runs": runs,
            "training_ratio": ratio(lambda r: r["long"]["tokens_per_s"]),
            "end_to_end_ratio": ratio(lambda r: r["end_to_end"]),
            "end_to_end_cpu_ratio": ratio(lambda r: r["end_to_end_cpu"])}


def add_options(p: argparse.ArgumentParser) -> None:
    """The run's shapes and repeats (shared with targets.py)."""
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--short", type=int, default=1, help="epochs of the short run")
    p.add_argument("--long", type=int, default=3, help="epochs of the long run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that it all runs")


def check_options(args: argparse.Namespace) -> None:
    """Refuse impossible settings; --quick shrinks everything to seconds."""
    if args.long <= args.short:
        sys.exit(f"error: --long={args.long} must be more epochs than --short={args.short}")
    if args.quick:
        args.hidden, args.max_tokens, args.repeats = 16, 6000, 1
        args.short, args.long = 1, 2
    if not (ROOT / "outputs" / "data" / "timemachine.txt").is_file():
        sys.exit("error: outputs/data/timemachine.txt is missing; run scripts/train.py once or "
                 "copy the book's file there")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(PEERS), default=list(PEERS))
    add_options(p)
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "peers.json")
    args = p.parse_args()
    check_options(args)
    cpu = cpu_name()
    print(f"CPU: {cpu}, {args.threads} thread(s), {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [compare(m, Path(tmp), args) for m in args.models]
    for r in results:
        print(f"{r['model']}: ours / {PEERS[r['model']]}: training {r['training_ratio']:.2f}x, end "
              f"to end {r['end_to_end_ratio']:.2f}x (CPU time {r['end_to_end_cpu_ratio']:.2f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "cpu_model": cpu, "date": datetime.date.today().isoformat(), "threads": args.threads,
        "cores": os.cpu_count(), "load_average_at_start": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results}, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
