"""What the project's Hydra sweepers share: one sweep per sweep dir, one-line errors.

    python scripts/train.py ablation=models hydra.sweep.dir=outputs/multiruns/models  # start
    python scripts/train.py ablation=models hydra.sweep.dir=outputs/multiruns/models  # finish it

The first launch writes `sweep.yaml` into the sweep dir: the sweep's kind, its swept
parameters and the composed config (unresolved, without Hydra's node and without the keys a
relaunch may change: resources, launcher, n_trials). A later launch into the same dir must match
it, or it is refused with one line: it would mix two sweeps' jobs in one table. The jobs
themselves then finish, resume or stay as they were (rnnlab.training.relaunch).

A `ConfigError` (a bad setting, or a job refusing a changed config) ends the whole sweep with
`error: ...` on stderr and exit status 2, as in a single run.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from rnnlab.config.overrides import split_override
from rnnlab.config.saved import upgrade_targets
from rnnlab.errors import ConfigError
from rnnlab.training.relaunch import IGNORED, config_differences, without_ignored

log = logging.getLogger("rnnlab")
MANIFEST = "sweep.yaml"
# overrides a relaunch may change: resources, where and how jobs run, how many trials
FREE_OVERRIDES = ("hydra/launcher", "hydra.launcher", "hydra.sweep.dir", "hydra.sweeper.n_trials",
                  "hydra.sweeper.n_jobs", "hydra.verbose", "hydra.job_logging", *IGNORED)


def sweep_identity(kind: str, config: DictConfig, arguments: Sequence[str]) -> dict:
    """What makes two launches the same sweep (see the module docstring)."""
    plain = OmegaConf.to_container(config, resolve=False)
    params = plain.get("hydra", {}).get("sweeper", {}).get("params") or {}
    return {"kind": kind,
            "params": {str(k): str(v) for k, v in params.items()},
            "overrides": {key: value for key, value in map(split_override, sorted(arguments))
                          if not any(key == f or key.startswith(f + ".") for f in FREE_OVERRIDES)},
            "config": without_ignored({k: v for k, v in plain.items() if k != "hydra"})}


def claim_sweep_dir(sweep_dir: Path, identity: dict) -> None:
    """Write the manifest on the first launch; refuse a later launch of another sweep."""
    path = sweep_dir / MANIFEST
    if path.is_file():
        before = yaml.safe_load(path.read_text()) or {}
        now = yaml.safe_load(yaml.safe_dump(identity))
        # what the command changed first; the composed config tells of edited config files
        diffs = config_differences({k: v for k, v in before.items() if k != "config"},
                                   {k: v for k, v in now.items() if k != "config"}) \
            or config_differences(without_ignored(upgrade_targets(before.get("config", {}))),
                                  now["config"])
        if diffs:
            raise ConfigError(
                f"hydra.sweep.dir={sweep_dir} holds another sweep ({'; '.join(diffs[:3])}"
                f"{'; ...' if len(diffs) > 3 else ''}); to resume it, repeat its command "
                f"(see {path}), or give this sweep a new hydra.sweep.dir")
        log.info("resuming the sweep in %s: finished jobs are kept, interrupted ones resume",
                 sweep_dir)
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("sweep dir %s (the same command with hydra.sweep.dir=%s finishes it if stopped; "
             "python scripts/report.py %s reports on it)", sweep_dir, sweep_dir, sweep_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(identity, sort_keys=False))
    tmp.replace(path)


@contextmanager
def one_line_errors():
    """A ConfigError anywhere in the sweep: `error: ...` and exit status 2, no traceback."""
    try:
        yield
    except ConfigError as e:
        log.debug("error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def raise_config_errors(results: Sequence[JobReturn]) -> None:
    """A job that refused its settings stops the sweep with its own line (other failures are
    left to the sweeper, which records them)."""
    for r in results:
        error = getattr(r, "_return_value", None)
        if r.status == JobStatus.FAILED and isinstance(error, ConfigError):
            raise error


class RefusingLauncher:
    """Wraps a Hydra launcher: after each batch, a job's ConfigError ends the sweep."""

    def __init__(self, launcher):
        self.launcher = launcher

    def launch(self, job_overrides, initial_job_idx: int) -> Sequence[JobReturn]:
        results = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        raise_config_errors(results)
        return results

    def __getattr__(self, name: str):
        return getattr(self.launcher, name)
