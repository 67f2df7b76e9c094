"""Issue 28's "done when" in one run on this machine: the peers side by side (peers.py), a
default epoch profiled (epoch_profile.py), and each target printed with its figure and whether it
is met, under the CPU's name and the date.

    python benchmarks/targets.py --out benchmarks/results/<cpu>_targets.json   # about 12 min
    python benchmarks/targets.py --isa avx2     # this CPU capped at AVX2 (a proxy, not an AMD)
    python benchmarks/targets.py --quick        # seconds: tiny sizes, checks the machinery

Targets (float32, 1 thread for the peers): `rnn_scratch` training >= 1.25x and end to end
>= 1.10x the book's program; end to end >= 1.05x pytorch/examples for `model=lstm` and
`model=rnn`; validation <= 5% of a default epoch (and of a float32 one, where the default is
bf16); the gradient probe <= 10% of the epoch it runs in. The ratios are medians over interleaved
repeats (peers.py); one machine's figures say nothing about another CPU kind's.

`--isa avx2` caps torch (ATEN_CPU_CAPABILITY), MKL and oneDNN at AVX2 for every program it runs,
as on an AMD EPYC of the Zen 3 kind; the caches, clock and memory stay this CPU's, so it is a
proxy for the instruction set only. Kernel choices are timed again under the cap (the kernel
cache keys on it) and the epochs are profiled in float32 only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
from pathlib import Path

from epoch_profile import QUICK, profile
from peers import PEERS, ROOT, add_options, check_options, compare, cpu_name

ISA_CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                     "ONEDNN_MAX_CPU_ISA": "AVX2"}}
FLOAT32 = ["trainer.precision=32-true"]
# (what, where in the results, bound, "min" for a floor or "max" for a ceiling)
TARGETS = [
    ("rnn_scratch training / the book's program", ("peers", "rnn_scratch", "training_ratio"),
     1.25, "min"),
    ("rnn_scratch end to end / the book's program", ("peers", "rnn_scratch", "end_to_end_ratio"),
     1.10, "min"),
    ("lstm end to end / pytorch/examples", ("peers", "lstm", "end_to_end_ratio"), 1.05, "min"),
    ("rnn end to end / pytorch/examples", ("peers", "rnn", "end_to_end_ratio"), 1.05, "min"),
    ("validation share of a default epoch", ("epochs", "default", "validation_share"), 0.05,
     "max"),
    ("validation share of a float32 epoch", ("epochs", "float32", "validation_share"), 0.05,
     "max"),
    ("gradient probe share of its epoch", ("epochs", "default", "probe_share"), 0.10, "max"),
    ("gradient probe share of its epoch, float32", ("epochs", "float32", "probe_share"), 0.10,
     "max"),
]


def verdicts(results: dict) -> list[dict]:
    """Each target with its measured figure and whether it is met (None: not measured here)."""
    out = []
    for what, path, bound, kind in TARGETS:
        value = results
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, (int, float)) or value != value:  # absent, or NaN: too short
            value = None
        met = None if value is None else (value >= bound if kind == "min" else value <= bound)
        out.append({"target": what, "bound": bound, "kind": kind, "value": value, "met": met})
    return out


def epoch_shares(epochs: int, overrides: list[str]) -> dict:
    result = profile(epochs, overrides)
    return {"validation_share": result["share_of_epoch"]["validation"],
            "probe_share": result["probe_share_of_epoch"], "epoch_s": result["epoch_s"],
            "precision": result["precision"], "threads": result["threads"], "profile": result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(p)
    p.add_argument("--epochs", type=int, default=3, help="epochs of each profiled run")
    p.add_argument("--isa", choices=list(ISA_CAPS), default=None,
                   help="cap the instruction sets of every program run (a proxy)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "targets.json")
    args = p.parse_args()
    check_options(args)
    os.environ.update(ISA_CAPS.get(args.isa, {}))  # inherited by every program run below
    cpu = cpu_name() + (f", capped at {args.isa.upper()}" if args.isa else "")
    load = os.getloadavg()
    print(f"CPU: {cpu}, {os.cpu_count()} cores; load average {load[0]:.2f}; "
          f"{datetime.datetime.now():%Y-%m-%d %H:%M}", flush=True)
    results: dict = {"peers": {}, "epochs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in PEERS:
            results["peers"][model] = compare(model, Path(tmp), args)
    quick = QUICK if args.quick else []
    runs = {"float32": FLOAT32} if args.isa else {"default": [], "float32": FLOAT32}
    for name, overrides in runs.items():
        results["epochs"][name] = epoch_shares(args.epochs, overrides + quick)
        shares = results["epochs"][name]
        print(f"  {name} epoch ({shares['precision']}, {shares['threads']} threads): "
              f"{shares['epoch_s']:.2f} s, validation {100 * shares['validation_share']:.1f}%, "
              f"probe {100 * shares['probe_share']:.1f}%", flush=True)
    if args.isa:  # a CPU without bf16 trains in float32 by default
        results["epochs"]["default"] = results["epochs"]["float32"]
    table = verdicts(results)
    print(f"\nIssue 28's targets on {cpu}:")
    for row in table:
        sign = ">=" if row["kind"] == "min" else "<="
        value = "not measured" if row["value"] is None else (
            f"{row['value']:.2f}x" if row["kind"] == "min" else f"{100 * row['value']:.1f}%")
        bound = f"{row['bound']:.2f}x" if row["kind"] == "min" else f"{100 * row['bound']:.0f}%"
        met = {True: "met", False: "NOT met", None: "-"}[row["met"]]
        print(f"  {row['target']:46s} {sign} {bound:6s} {value:>13s}  {met}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "cpu_model": cpu, "isa_cap": ISA_CAPS.get(args.isa), "date":
        datetime.date.today().isoformat(), "cores": os.cpu_count(),
        "load_average_at_start": load,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "targets": table, "results": results}, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
