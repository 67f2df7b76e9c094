"""Checks a run makes once its data and model exist: a checkpoint to resume belongs to this model
and vocabulary, and full BPTT's activations fit in memory. (Checks of values alone are made
before torch is imported: `config.checks`.)

Each failure is a `ConfigError` whose one-line message names the key, the bad value and the fix;
scripts print it without a traceback and exit with status 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from rnnlab.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from rnnlab.text.vocab import Vocab

log = logging.getLogger(__name__)


def full_bptt_bytes(batch_size: int, stream_len: int, num_hiddens: int, vocab_size: int,
                    num_layers: int = 1, gates: int = 1) -> int:
    """Activation memory autograd keeps for one backward through whole streams (float32):
    per step and row, the saved hidden states and gate activations of every layer, plus the
    one-hot input and the logits, softmax and their gradients over the vocabulary."""
    per_token = num_layers * num_hiddens * (2 + 2 * gates) + 4 * vocab_size
    return 4 * batch_size * stream_len * per_token


def check_resume_checkpoint(path: Path, model: nn.Module, vocab: Vocab) -> None:
    """Refuse, with the reason, a checkpoint that is corrupt or from another model/vocabulary."""
    import torch
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        theirs = ckpt["state_dict"]
    except Exception as e:
        raise ConfigError(f"ckpt_path={path} is corrupt or not a Lightning checkpoint "
                          f"({type(e).__name__}: {e}); use another checkpoint of the run "
                          f"(checkpoints/best*.ckpt) or ckpt_path=null") from e
    if ckpt.get("vocab") and ckpt["vocab"]["idx_to_token"] != vocab.idx_to_token:
        raise ConfigError(f"ckpt_path={path} was trained on another vocabulary "
                          f"({len(ckpt['vocab']['idx_to_token'])} tokens, this data has "
                          f"{len(vocab)}); resume with the data settings it was trained with")
    mine = model.state_dict()
    differ = sorted(k for k in set(mine) | set(theirs)
                    if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape)
    if differ:
        raise ConfigError(f"ckpt_path={path} belongs to another model (parameters differ: "
                          f"{', '.join(differ[:4])}); resume with the model settings it was "
                          f"trained with (see config.yaml beside its checkpoints/)")


def check_full_bptt_memory(cfg: DictConfig, num_train_tokens: int, vocab_size: int) -> None:
    core = cfg.model.core
    gates = {"gru": 3, "lstm": 4}.get(core.get("kind"), 1)
    need = full_bptt_bytes(cfg.data.batch_size, num_train_tokens // cfg.data.batch_size,
                           core.num_hiddens, vocab_size, core.get("num_layers", 1), gates)
    limit = cfg.bptt.get("max_memory_gb", 8) * 2**30
    log.info("bptt=full: estimated activation memory %.2f GB (limit %.2f GB)", need / 2**30,
             limit / 2**30)
    if need > limit:
        raise ConfigError(
            f"bptt=full would keep about {need / 2**30:.1f} GB of activations, over "
            f"bptt.max_memory_gb={limit / 2**30:g}; raise that limit, use data.max_tokens or a "
            f"larger data.batch_size to shorten the streams, or bptt=regular")
