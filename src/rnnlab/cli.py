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


def run_main(task: Callable[[DictConfig], object], cfg: DictConfig):
    try:
        return task(cfg)
    except (ValueError, FileNotFoundError) as e:
        try:
            multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        except ValueError:
            multirun = False
        if multirun:
            raise
        log.debug("error", exc_info=True)  # the traceback stays in the run's log file only
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
