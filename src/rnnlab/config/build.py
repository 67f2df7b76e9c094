"""Objects built from config nodes (`_target_`), with a bad setting as one clear error.

    from rnnlab.config.build import build
    dm = build(cfg.data)                          # a TextDataModule
    model = build(cfg.model, vocab_size=28)       # extra arguments as in hydra.utils.instantiate
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from rnnlab.errors import NO_GPU


def build(node: DictConfig, **kwargs):
    """Hydra's instantiate, but a bad setting caught by the target's constructor comes out as
    its own ValueError (one clear line), not wrapped in Hydra's InstantiationException; so does
    Lightning's MisconfigurationException."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ValueError):
            raise cause from None
        if type(cause).__name__ == "MisconfigurationException":  # Lightning's, not imported here
            gpu = "No supported gpu backend" in str(cause) or (
                "CUDA" in str(cause) and "not available" in str(cause))
            raise ValueError(NO_GPU if gpu else f"{node.get('_target_')}: {cause}") from None
        raise
