"""What every script's entry point shares: one-line errors and exit codes, building objects
from config nodes, the saved config.

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
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import rnnlab.runname  # noqa: F401  registers ${rnnlab.run_name:} (sweep job dir names)

log = logging.getLogger("rnnlab")


def build(node: DictConfig, **kwargs):
    """Hydra's instantiate, but a bad setting caught by the target's constructor comes out as
    its own ValueError (one clear line), not wrapped in Hydra's InstantiationException."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ValueError):
            raise e.__cause__ from None
        raise


def run_main(task: Callable[[DictConfig], object], cfg: DictConfig):
    try:
        return task(cfg)
    except (ValueError, FileNotFoundError, PermissionError) as e:
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
