"""Hydra's runtime as a run sees it, and the `key=value` overrides it was launched with.

    from rnnlab.config.overrides import hydra_runtime, job_overrides, split_override
    hc = hydra_runtime()          # HydraConfig of this job, None in a config composed by a test
    job_overrides()               # ["model=lstm", "seed=1"]: [] outside Hydra's runtime
    split_override("+a.b=1")      # ("a.b", "1"): '+', '++' and '~' dropped from the key
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def hydra_runtime() -> DictConfig | None:
    """This job's Hydra config; None where the config was composed without Hydra's runtime (a
    test's compose call, or a library user's)."""
    try:
        return HydraConfig.get()
    except ValueError:
        return None


def job_overrides() -> list[str]:
    hc = hydra_runtime()
    return list(hc.overrides.task) if hc is not None else []


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value
