"""Where a default epoch's time goes: `scripts/train.py` under Lightning's SimpleProfiler, its
report grouped into training steps, validation, checkpoints, the gradient probe and the rest.

    python benchmarks/epoch_profile.py                          # 3 epochs of the default run
    python benchmarks/epoch_profile.py --epochs 3 -- torch_threads=1 trainer.precision=32-true
    python benchmarks/epoch_profile.py --quick                  # seconds: tiny sizes

Everything after `--` goes to scripts/train.py as overrides. Shares are of the mean epoch
(Lightning's `run_training_epoch`, which holds the epoch's validation and checkpoints); the
probe runs at epoch 0, every 5 epochs and after the last, outside the epochs, so its share is
of one epoch per probe (the issue's target: at most 10%), timed by the callback itself
(summary.json's grad_probe_seconds); the through_time/g_k image, drawn once at the end of
training, is printed apart (grad_image_seconds). Prints the CPU, threads and load average;
`--out` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from peers import cpu_name

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {  # an action goes to the first group whose test matches it
    "training steps": lambda a: a == "run_training_batch",
    "checkpoints": lambda a: "Checkpoint" in a and ".on_" in a,  # saved in on_validation_end
    "validation": lambda a: "validation" in a.lower() or a.startswith("[_EvaluationLoop].val"),
    "gradient probe": lambda a: a.startswith("[Callback]GradientsThroughTime"),
    "data": lambda a: a.startswith("[_TrainingEpochLoop].train_dataloader_next"),
}


QUICK = ["data.max_tokens=4000", "model.core.num_hiddens=16"]  # --quick: tiny sizes
# hooks that run inside run_training_batch (Lightning's optimizer closure): already counted there
INSIDE_BATCH = ("optimizer_step", "backward", "training_step", "zero_grad", "clipping",
                "on_before_optimizer_step", "on_after_backward", "on_before_backward")


def parse(report: str) -> dict[str, tuple[float, int]]:
    """SimpleProfiler's table: action -> (total seconds, calls)."""
    out = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("Action", "Total"):
            try:
                out[cells[0]] = (float(cells[3]), int(cells[2]))
            except ValueError:
                continue
    return out


def summarise(actions: dict[str, tuple[float, int]]) -> dict:
    epochs = actions["run_training_epoch"][1]
    epoch = actions["run_training_epoch"][0] / epochs
    groups = dict.fromkeys(GROUPS, 0.0)
    for action, (total, _) in actions.items():
        if action.startswith("[_EvaluationLoop].test") or "test_step" in action:
            continue
        for name, test in GROUPS.items():
            if test(action):
                groups[name] += total
                break
    probes = max(actions.get("[Callback]GradientsThroughTime.on_train_start", (0, 0))[1]
                 + actions.get("[Callback]GradientsThroughTime.on_train_end", (0, 0))[1]
                 + epochs // 5, 1)
    rest = sorted(((total / epochs, action) for action, (total, _) in actions.items()
                   if action not in ("run_training_epoch", "run_training_batch")
                   and not any(test(action) for test in GROUPS.values())
                   and not any(word in action for word in INSIDE_BATCH)
                   and "test" not in action), reverse=True)
    per_epoch = {k: v / epochs for k, v in groups.items() if k != "gradient probe"}
    listed = sum(per_epoch.values())
    return {"epochs": epochs, "epoch_s": epoch, "per_epoch_s": per_epoch,
            "share_of_epoch": {k: v / epoch for k, v in per_epoch.items()},
            "rest_of_epoch_s": epoch - listed,
            "largest_rest_actions_s": {a: t for t, a in rest[:6]},
            "probe_s": groups["gradient probe"] / probes, "probes": probes,
            "probe_share_of_epoch": groups["gradient probe"] / probes / epoch}


def callback_clock(result: dict, summary: dict) -> dict:
    """The probe's time from the callback's own clock (summary.json's grad_probe_seconds): the
    profiler's GradientsThroughTime actions also hold the g_k image drawn once at the end."""
    if "grad_probe_seconds" in summary:
        result = {**result, "probe_s": summary["grad_probe_seconds"],
                  "probe_share_of_epoch": summary["grad_probe_seconds"] / result["epoch_s"],
                  "image_s": summary.get("grad_image_seconds")}
    return result


def profile(epochs: int, overrides: list[str]) -> dict:
    """Run scripts/train.py for `epochs` epochs under SimpleProfiler with `overrides`; the
    grouped epoch (summarise, callback_clock) with the CPU, date, threads and precision."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "scripts/train.py", f"trainer.max_epochs={epochs}",
               f"hydra.run.dir={tmp}/run",
               "+trainer.profiler._target_=pytorch_lightning.profilers.SimpleProfiler",
               f"+trainer.profiler.dirpath={tmp}", "+trainer.profiler.filename=profile",
               *overrides]
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"error: scripts/train.py failed:\n{proc.stderr[-3000:]}")
        report = (Path(tmp) / "fit-profile.txt").read_text()
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    result = callback_clock(summarise(parse(report)), summary)
    result.update(cpu_model=cpu_name(), date=datetime.date.today().isoformat(),
                  threads=summary.get("torch_threads"), precision=summary.get("precision"),
                  load_average_at_start=load, overrides=list(overrides))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the machinery")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="scripts/train.py overrides (after --)")
    args = p.parse_args()
    overrides = list(args.overrides)
    if args.quick:
        overrides += QUICK
    result = profile(args.epochs, overrides)
    load = result["load_average_at_start"]
    print(f"CPU: {result['cpu_model']}, {result['threads']} thread(s), {result['precision']}, "
          f"load average {load:.2f} at start")
    print(f"mean epoch {result['epoch_s']:.2f} s over {result['epochs']} epochs:")
    for name, seconds in result["per_epoch_s"].items():
        print(f"  {name:15s} {seconds:7.3f} s  {100 * result['share_of_epoch'][name]:5.1f}%")
    print(f"  {'rest':15s} {result['rest_of_epoch_s']:7.3f} s  "
          f"{100 * result['rest_of_epoch_s'] / result['epoch_s']:5.1f}%  (logging, hooks, loop)")
    for action, seconds in result["largest_rest_actions_s"].items():
        print(f"    {seconds:7.3f} s  {action[:90]}")
    print(f"gradient probe {result['probe_s']:.3f} s each ({result['probes']} probes), "
          f"{100 * result['probe_share_of_epoch']:.1f}% of an epoch")
    if result.get("image_s") is not None:
        print(f"through_time/g_k image {result['image_s']:.3f} s, once at the end of training")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
