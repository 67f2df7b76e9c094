"""What every script's entry point shares: bad input ends in one line and a non-zero exit.

In a single run a `ConfigError`/`CorpusError`/`ValueError` is printed as `error: ...` (no
traceback) and the process exits with status 2. In a multirun the error is re-raised instead so
Hydra's launcher records that job as failed and goes on with the others.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

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
