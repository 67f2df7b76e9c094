"""Sweep job dirs (and so TensorBoard run names) that show only what differs between the jobs.

    hydra.sweep.subdir: ${hydra.job.num}_${rnnlab.run_name:}     # conf/hydra/default.yaml
    -> 0_model=rnn_scratch,sampling=random   (not 0_data.sampling=random,model=rnn_scratch,
                                               trainer.max_epochs=2,...)

Importing this module registers the `rnnlab.run_name` resolver; config.cli imports it, so every
script, and every launcher's worker (which unpickles the scripts' `run_main`), has it. The swept
keys are the sweeper's `params` and the command line's sweep overrides, which the basic sweeper
saves unexpanded in <sweep dir>/multirun.yaml before it launches a job. Where neither is known,
the name is Hydra's override_dirname.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from rnnlab.config.overrides import split_override


def swept_keys(params: DictConfig | dict | None, multirun_yaml: Path | None) -> list[str]:
    """The keys a sweep varies, in the order given: the sweeper's params, then the command
    line's sweeps as saved in multirun.yaml."""
    overrides = [f"{k}={v}" for k, v in (params or {}).items()]
    if multirun_yaml is not None and multirun_yaml.is_file():
        saved = OmegaConf.load(multirun_yaml)
        overrides += list(OmegaConf.select(saved, "hydra.overrides.task", default=None) or [])
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # another sweeper's syntax: unknown, so nothing is called swept
        return []
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    return list(dict.fromkeys(keys))


def run_name(*, _root_: DictConfig) -> str:
    """`key=value` of this job's swept keys (last part of the key only), sorted by key."""
    hydra = _root_.hydra
    try:
        swept = set(swept_keys(hydra.sweeper.get("params"),
                               Path(hydra.sweep.dir) / "multirun.yaml"))
        own = [split_override(o) for o in hydra.overrides.task]
        parts = sorted(f"{k.split('.')[-1]}={v}".replace("/", "-") for k, v in own if k in swept)
    except Exception:  # never let a name stop a sweep
        parts = []
    return ",".join(parts) or hydra.job.override_dirname


if not OmegaConf.has_resolver("rnnlab.run_name"):
    OmegaConf.register_new_resolver("rnnlab.run_name", run_name)
