"""The config as a run saves it (config.yaml, a checkpoint's `run_config`) and reads it back.

    from rnnlab.config.saved import plain_config, flatten, upgrade_targets
    plain = plain_config(cfg)            # resolved, plain containers, without Hydra's node
    save_config(cfg, run_dir)            # run_dir/config.yaml (and the log)
    flatten({"a": {"b": 1}})             # {"a.b": 1}
    upgrade_targets(old_run_config)      # `_target_`s of before the subpackages, renamed

Run dirs and checkpoints written before the package was split into subpackages (2026-12-03)
name their objects by the old flat modules (`rnnlab.lm.LanguageModel`); every place that builds
or compares a saved config passes it through `upgrade_targets`, so old checkpoints still
generate and resume and old sweep dirs still relaunch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("rnnlab")

# old target or module -> new one; a whole target matches first, else exactly its module
MOVED = {
    "pytorch_lightning.callbacks.ModelCheckpoint":
        "rnnlab.training.checkpoints.MovableCheckpoint",
    "rnnlab.data": "rnnlab.text.datamodule",
    "rnnlab.lm": "rnnlab.models.lm",
    "rnnlab.cores": "rnnlab.models.cores",
    "rnnlab.schedule": "rnnlab.models.schedule",
    "rnnlab.callbacks": "rnnlab.training.samples",
    "rnnlab.gradient_callback": "rnnlab.training.probe_callback",
    "rnnlab.tblogger": "rnnlab.training.tblogger",
    "rnnlab.distributed": "rnnlab.training.distributed",
    "rnnlab.forecast": "rnnlab.forecast.series",
}


def upgrade_targets(node: Any) -> Any:
    """A plain config (dicts and lists) with every old `_target_` renamed; other values kept."""
    if isinstance(node, dict):
        out = {k: upgrade_targets(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str) and target in MOVED:
            out["_target_"] = MOVED[target]
        elif isinstance(target, str) and "." in target:
            module, _, name = target.rpartition(".")
            if module in MOVED:
                out["_target_"] = f"{MOVED[module]}.{name}"
        return out
    if isinstance(node, list):
        return [upgrade_targets(v) for v in node]
    return node


def plain_config(cfg: DictConfig | dict) -> dict:
    """The config resolved into plain dicts and lists, without Hydra's own node: what
    config.yaml holds."""
    if isinstance(cfg, dict):
        return {k: v for k, v in cfg.items() if k != "hydra"}
    return {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value)
            else value for key, value in cfg.items() if key != "hydra"}


def flatten(node: Any, prefix: str = "", lists: bool = True) -> dict[str, Any]:
    """Dotted key -> leaf value of a plain container (list items as `key.0` when `lists`, else
    a list is one leaf); an empty dict or list is a leaf of its own."""
    if isinstance(node, dict) and node:
        items = node.items()
    elif isinstance(node, list) and node and lists:
        items = enumerate(node)
    else:
        return {prefix[:-1]: node} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}{k}.", lists))
    return out


def save_config(cfg: DictConfig, out_dir: Path) -> Path:
    """The resolved config (without Hydra's own node) as out_dir/config.yaml, and in the log
    (on the console too with print_config=true)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(plain_config(cfg)))
    log.log(logging.INFO if cfg.get("print_config") else logging.DEBUG, "config:\n%s",
            path.read_text())
    return path
