"""Pick a sweep job up where an earlier launch of the same sweep left it.

    from rnnlab.training.relaunch import previous_run, read_summary
    earlier = read_summary(out_dir)                  # None: a fresh job dir
    metric = previous_run(cfg, out_dir, earlier)     # not None: done, return it to the sweeper

A job dir of a multirun that already holds summary.json belongs to an earlier launch of the
same sweep (the same `hydra.sweep.dir` named again, or a cluster job requeued after a time
limit). Its status decides what happens, and the log says which:
- finished: not trained again; its stored metric is returned (Optuna and the report see it);
- interrupted, or running (killed) with checkpoints/last.ckpt: resumed from it exactly
  (`cfg.ckpt_path` is set); without a last.ckpt it is trained from the start;
- failed or diverged: kept as it is (diverged returns its metric, failed raises its error again)
  unless `retry_failed=true`, which trains it again from the start.
A job dir whose config.yaml differs from the new config is refused with a ConfigError, never
mixed. Keys that may legitimately differ between launches are in IGNORED.

A live job holds its dir's lock (`hold_job`: fcntl.flock on <job dir>/.job.lock, released by
the kernel when the process ends, however it ends), so a second launch of the same sweep while
the first still runs refuses the jobs the first is training (JobBusy) instead of training them
a second time into the same files; a killed job's lock is gone, and it resumes as above.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import IO

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnlab.config.saved import flatten, plain_config, upgrade_targets
from rnnlab.errors import ConfigError

log = logging.getLogger(__name__)

# resources, resume machinery, file names, the sample's prefix and how held-out text is read
# (windows, rows side by side: the same scores to 1e-6), not the experiment: they may change
# between launches (the best checkpoint's name format, the prefix's default and the held-out
# window changed once; an old sweep still resumes)
IGNORED = ("retry_failed", "ckpt_path", "torch_threads", "paths", "data.data_dir",
           "callbacks.checkpoint.filename", "callbacks.sample_text.prefix", "kernels.cache_dir",
           "kernels.retime", "data.eval_num_steps", "model.eval_chunks", "model.eval_burn_in")
# keys added after sweeps were made, at the values that do what their absence did: an old
# sweep (no such key) and a new one at these values are the same experiment
ADDED_AS_BEFORE = {"eval.krause": False, "eval.krause_lr": [0.0001], "eval.krause_decay": [0.0]}
# what a resumed fit may not produce again (it had nothing left to train): kept from before
CARRIED = ("final_val_ppl", "train_ppl", "tokens_per_s")


class KeptFailure(RuntimeError):
    """A job that failed in an earlier launch, kept as it is (retry_failed=false)."""


class JobBusy(ConfigError):
    """Another live process is training this job dir (one line, exit status 2)."""


def hold_job(out_dir: Path) -> IO | None:
    """Take the job dir's lock until the returned file is closed (or the process ends);
    JobBusy when another process holds it. None where there is no flock (not POSIX)."""
    try:
        import fcntl
    except ImportError:
        return None
    lock = open(out_dir / ".job.lock", "a+")  # noqa: SIM115 (held past this function)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "another process"
        lock.close()
        raise JobBusy(f"{out_dir} is being trained by {owner} (a launch of this sweep that is "
                      f"still running); let it finish, or stop it and launch again to resume "
                      f"this job") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"process {os.getpid()}")
    lock.flush()
    return lock


def comparable(cfg: DictConfig | dict) -> dict:
    """The config as config.yaml holds it (resolved, no hydra node; old `_target_`s renamed,
    as yaml reads it back), minus IGNORED keys."""
    return without_ignored(upgrade_targets(yaml.safe_load(OmegaConf.to_yaml(plain_config(cfg)))))


def without_ignored(plain: dict) -> dict:
    """`plain` with the IGNORED keys dropped (a dotted key from its parent node), and the
    ADDED_AS_BEFORE keys where they hold that value, in place."""
    for key in (*IGNORED, *ADDED_AS_BEFORE):
        *parents, leaf = key.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and (
                key in IGNORED or node[leaf] == ADDED_AS_BEFORE[key]):
            node.pop(leaf)
    return plain


def config_differences(old: dict, new: dict) -> list[str]:
    """'key: old value there, new value now' for each differing leaf, sorted by key."""
    a, b = flatten(old, lists=False), flatten(new, lists=False)
    missing = object()
    return [f"{k}: {a.get(k, '(absent)')!s} there, {b.get(k, '(absent)')!s} now"
            for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def objective(summary: dict) -> float:
    """What train() returns to a sweeper for a job: the val/ppl of its strongest evaluation
    (the online mixture, dynamic evaluation mixed with the n-gram, the mixture, dynamic
    evaluation, or the best checkpoint's), inf when there is none."""
    best = next((summary[k] for k in ("val_ppl_online", "val_ppl_dyn_mix", "val_ppl_mix",
                                      "val_ppl_dyn")
                 if summary.get(k) is not None), summary.get("best_val_ppl"))
    return float(best) if isinstance(best, (int, float)) and math.isfinite(best) else math.inf


def read_summary(out_dir: Path) -> dict | None:
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None  # a fresh job dir (or a summary never written whole)
    return summary if isinstance(summary, dict) else None


def previous_run(cfg: DictConfig, out_dir: Path, summary: dict) -> float | None:
    """Decide what to do with an earlier launch's job in out_dir (see the module docstring).
    Returns the stored metric when the job is done, None when it must be trained (from
    checkpoints/last.ckpt when `cfg.ckpt_path` was set here). Raises ConfigError for a job dir
    of another config, KeptFailure for a failed job kept as it is."""
    saved = out_dir / "config.yaml"
    if saved.is_file():
        diffs = config_differences(comparable(yaml.safe_load(saved.read_text()) or {}),
                                   comparable(cfg))
        if diffs:
            raise ConfigError(
                f"{out_dir} holds a job of another config ({'; '.join(diffs[:3])}"
                f"{'; ...' if len(diffs) > 3 else ''}); rerun the sweep with the settings it was "
                f"started with, or give this one a new hydra.sweep.dir")
    status, name = summary.get("status"), out_dir.name
    last = out_dir / "checkpoints" / "last.ckpt"
    if status == "finished":
        log.info("job %s: finished in an earlier launch, not trained again (val/ppl %s)", name,
                 summary.get("best_val_ppl"))
        return objective(summary)
    if status in ("failed", "diverged") and not cfg.get("retry_failed", False):
        log.warning("job %s: %s in an earlier launch, kept as it is (retry_failed=true trains "
                    "it again)", name, status)
        if status == "diverged":
            return objective(summary)
        raise KeptFailure(f"job {name} failed in an earlier launch ({summary.get('error')}); "
                          f"kept as it is: retry_failed=true trains it again")
    if status in ("interrupted", "running") and last.is_file():
        log.info("job %s: %s in an earlier launch, resuming from %s", name, status, last)
        with open_dict(cfg):
            cfg.ckpt_path = str(last)
        return None
    log.info("job %s: %s in an earlier launch%s, training it from the start", name, status,
             "" if status in ("failed", "diverged") else " without a last.ckpt")
    for stale in ("checkpoints", "tb"):  # no old best-*.ckpt or curves mixed into the new run
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    return None


def carry_over(summary: dict, before: dict | None) -> None:
    """Keep the earlier launch's values of CARRIED keys that the resumed fit did not produce
    (a job killed after its last step resumes with nothing left to train)."""
    for key in CARRIED if before else ():
        if summary.get(key) is None and before.get(key) is not None:
            summary[key] = before[key]
