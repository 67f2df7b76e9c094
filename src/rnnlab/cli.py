"""What every script's entry point shares: one-line errors and exit codes, the saved config.

In a single run a `ConfigError`/`CorpusError`/`ValueError` is printed as `error: ...` (no
traceback) and the process exits with status 2. In a multirun the error is re-raised instead so
Hydra's launcher records that job as failed and goes on with the others.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("rnnlab")


def _user_error(e: BaseException) -> BaseException | None:
    """The bad-input error behind `e`: itself, or the cause Hydra's instantiate wrapped."""
    for err in (e, e.__cause__):
        if isinstance(err, (ValueError, FileNotFoundError, PermissionError)):
            return err
    return None


def run_main(task: Callable[[DictConfig], object], cfg: DictConfig):
    try:
        return task(cfg)
    except Exception as raised:
        e = _user_error(raised)
        if e is None:
            raise
        try:
            multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        except ValueError:
            multirun = False
        if multirun:
            raise
        log.debug("error", exc_info=True)  # the traceback stays in the run's log file only
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def save_config(cfg: DictConfig, out_dir: Path) -> Path:
    """The resolved config (without Hydra's own node) as out_dir/config.yaml."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value)
             else value for key, value in cfg.items() if key != "hydra"}
    path = out_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(plain))
    return path
