"""Run what the claims need, resumably, and collect it (scripts/reproduce.py).

    from rnnlab.claims.runner import reproduce
    reproduce(cfg)           # cfg = rnnlab.claims.registry.load(["budget=smoke"])

<out_dir>/corpus/                   the derived texts (rnnlab.claims.texts)
<out_dir>/runs/train/seed_<s>/<n>_claims-variant=<v>/   a scripts/train.py sweep per seed over
                                    the variants (conf/claims/variant/): summary.json, tb/ per job
<out_dir>/runs/forecast/seed_<s>/   scripts/forecast.py per seed
<out_dir>/runs/claims/              the claims' figures and verdicts in TensorBoard
so `tensorboard --logdir <out_dir>/runs` holds every run.

Resuming: a seed's training sweep is launched only when one of its jobs is missing, and then as
the very same command, so the project's resumable sweeper (docs/sweeps.md) keeps finished jobs,
resumes interrupted ones from last.ckpt and trains the missing ones; a forecast seed runs only
when its summary.json is not finished. A killed reproduce.py run again finishes what is missing,
and more seeds (budget.seeds) add sweeps without touching the others. Other changes to a budget's
training settings make another experiment: the sweeper refuses them in the same out_dir.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from rnnlab.claims.registry import measures_needed, variants_needed
from rnnlab.claims.texts import write_corpora

log = logging.getLogger("rnnlab.claims")
ROOT = Path(__file__).resolve().parents[3]
DONE = ("finished", "diverged", "failed")  # failed jobs are kept by the sweeper, not retried
VARIANT_KEY = "+claims/variant"


def job_key(summary: dict) -> tuple[str, int] | None:
    """(variant, seed) of a claims sweep job, from the overrides its summary.json records."""
    over = dict(o.split("=", 1) for o in summary.get("overrides", []) if "=" in o)
    if VARIANT_KEY not in over:
        return None
    return over[VARIANT_KEY], int(over.get("seed", summary.get("seed", 0)))


def read_jobs(train_dir: Path) -> dict[tuple[str, int], dict]:
    """Every job summary.json of the per-seed sweeps under train_dir, by (variant, seed)."""
    jobs = {}
    for path in sorted(train_dir.glob("seed_*/*/summary.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # a job killed while writing: missing
            continue
        key = job_key(summary)
        if key is not None:
            jobs[key] = summary
    return jobs


def missing_jobs(train_dir: Path, variants: Sequence[str], seeds: Sequence[int]
                 ) -> list[tuple[str, int]]:
    """The (variant, seed) jobs without a finished (or diverged, or failed) summary."""
    jobs = read_jobs(train_dir)
    return [(v, s) for s in seeds for v in variants
            if (jobs.get((v, s)) or {}).get("status") not in DONE]


def train_command(cfg: DictConfig, variants: Sequence[str], seed: int) -> list[str]:
    """One seed's multirun of scripts/train.py over the variants; the same on every relaunch."""
    out = Path(cfg.out_dir).resolve()
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--multirun",
            f"{VARIANT_KEY}={','.join(variants)}", f"seed={seed}",
            f"data.data_dir={out / 'corpus'}", "data.preprocess=none",
            f"data.splits=[{','.join(str(x) for x in cfg.splits)}]",
            f"hydra.sweep.dir={out / 'runs' / 'train' / f'seed_{seed}'}",
            *cfg.budget.train, *cfg.budget.launcher]


def forecast_command(cfg: DictConfig, seed: int) -> list[str]:
    run_dir = Path(cfg.out_dir).resolve() / "runs" / "forecast" / f"seed_{seed}"
    return [sys.executable, str(ROOT / "scripts" / "forecast.py"), f"seed={seed}",
            f"hydra.run.dir={run_dir}", *cfg.budget.forecast]


def missing_forecasts(cfg: DictConfig) -> list[int]:
    base = Path(cfg.out_dir) / "runs" / "forecast"
    missing = []
    for s in cfg.budget.seeds:
        path = base / f"seed_{s}" / "summary.json"
        try:
            done = json.loads(path.read_text()).get("status") == "finished"
        except (OSError, json.JSONDecodeError):
            done = False
        if not done:
            missing.append(s)
    return missing


def _run(cmd: list[str], log_path: Path) -> int:
    log.info("running: %s", " ".join(cmd))
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    with open(log_path, "a") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                              cwd=ROOT).returncode


def run_all(cfg: DictConfig) -> dict:
    """Everything the registry needs that is not there yet; returns what ran, with timings."""
    out = Path(cfg.out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    write_corpora(out / "corpus", cfg.budget.corpus.max_chars, cfg.budget.corpus.block,
                  cfg.splits)
    ran: dict = {"train_jobs": [], "forecast_seeds": [], "seconds": {}}
    variants = variants_needed(cfg.claims)
    train_dir = out / "runs" / "train"
    todo = missing_jobs(train_dir, variants, cfg.budget.seeds)
    started = time.time()
    if todo:
        log.info("training %d of %d jobs (variant, seed): %s", len(todo),
                 len(variants) * len(cfg.budget.seeds), todo)
        ran["train_jobs"] = [list(j) for j in todo]
    for seed in dict.fromkeys(s for _, s in todo):  # seed by seed: whole seeds come first
        rc = _run(train_command(cfg, variants, seed), out / "train.log")
        # a sweep with a failed job exits 1 after running the others: the failed job's values
        # are missing (its claims inconclusive); only jobs still missing stop the page
        still = missing_jobs(train_dir, variants, [seed])
        if rc and still:
            raise RuntimeError(f"the training sweep of seed {seed} exited {rc} with jobs "
                               f"missing {still}; its output: {out / 'train.log'}")
        if rc:
            log.warning("the training sweep of seed %d exited %d: a job failed (see %s)", seed,
                        rc, out / "train.log")
    ran["seconds"]["train"] = round(time.time() - started, 1)
    started = time.time()
    if "forecast" in measures_needed(cfg.claims):
        for s in missing_forecasts(cfg):
            if _run(forecast_command(cfg, s), out / "forecast.log"):
                log.warning("forecast seed %d failed (see %s)", s, out / "forecast.log")
            ran["forecast_seeds"].append(s)
    ran["seconds"]["forecast"] = round(time.time() - started, 1)
    return ran


def collect(cfg: DictConfig) -> dict[str, dict[int, dict]]:
    """{variant: {seed: summary}} of the training sweep."""
    runs: dict[str, dict[int, dict]] = {}
    for (v, s), summary in read_jobs(Path(cfg.out_dir) / "runs" / "train").items():
        runs.setdefault(v, {})[s] = summary
    return runs


def reproduce(cfg: DictConfig) -> Path:
    """Run what is missing, measure every claim, write the page; returns claims.json's path."""
    from rnnlab.claims.figures import save_figures  # matplotlib only when a page is written
    from rnnlab.claims.page import evaluate_claims, write_page

    started = time.time()
    ran = run_all(cfg)
    runs = collect(cfg)
    # what the runs cost, whatever number of launches (resumes) it took to make them
    forecasts = [Path(cfg.out_dir) / "runs" / "forecast" / f"seed_{s}" / "summary.json"
                 for s in cfg.budget.seeds]
    ran["seconds"]["jobs"] = round(
        sum(x.get("wall_time_s") or 0 for v in runs.values() for x in v.values())
        + sum(json.loads(p.read_text()).get("wall_time_s") or 0 for p in forecasts
              if p.is_file()), 1)
    results = evaluate_claims(cfg, runs)
    save_figures(results, Path(cfg.out_dir), read_jobs(Path(cfg.out_dir) / "runs" / "train"))
    ran["seconds"]["total"] = round(time.time() - started, 1)
    return write_page(cfg, results, ran)
