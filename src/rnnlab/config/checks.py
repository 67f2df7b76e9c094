"""Config checks made once, before any data is downloaded or any model is built, and the checks
of what a config asks for once data and model exist (a checkpoint to resume, full BPTT's memory).

Each failure is a `ConfigError` whose one-line message names the key, the bad value and the fix;
scripts print it without a traceback and exit with status 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig

from rnnlab.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from rnnlab.text.vocab import Vocab

log = logging.getLogger(__name__)


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is unknown; use one of {list(allowed)}")


def _positive_int(key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")


def validate_config(cfg: DictConfig) -> None:
    """What the constructors do not check themselves (TextDataModule checks its own names,
    sizes and splits when it is built, which is before any data is read)."""
    from rnnlab.text.datamodule import (
        WINDOWS,  # torch: here, not in every importer (a sweep's main process)
    )

    data, model = cfg.data, cfg.model
    _choice("bptt", cfg.bptt.mode, WINDOWS)
    _positive_int("model.core.num_hiddens", model.core.num_hiddens)
    if model.core.get("num_layers") is not None:
        _positive_int("model.core.num_layers", model.core.num_layers)
    if model.get("embedding_dim") is not None:
        _positive_int("model.embedding_dim", model.embedding_dim)
    for key in ("eval_batch_size", "max_tokens"):
        if data.get(key) is not None:
            _positive_int(f"data.{key}", data[key])
    if cfg.get("torch_threads") is not None:
        _positive_int("torch_threads", cfg.torch_threads)
    if not 0 <= model.get("dropout", 0) < 1:
        raise ConfigError(f"model.dropout={model.dropout} must be in [0, 1)")
    if not 0 < cfg.bptt.get("keep_prob", 1.0) <= 1:
        raise ConfigError(f"bptt.keep_prob={cfg.bptt.keep_prob} must be in (0, 1]")
    if data.min_freq is not None and data.min_freq < 0:
        raise ConfigError(f"data.min_freq={data.min_freq} must be >= 0")
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} must be >= 0, or null for no "
                          f"clipping")
    mix = cfg.get("ngram_mix")
    if mix is not None:
        if not isinstance(mix, DictConfig) or set(mix) - {"order"}:
            raise ConfigError(f"ngram_mix={mix!r} must be null or {{order: N}}, e.g. "
                              f"ngram_mix.order=10")
        _positive_int("ngram_mix.order", mix.get("order", 10))
        _scores_the_tested_checkpoint(cfg, "ngram_mix", "its weight")
    ev = cfg.get("eval")
    if ev is not None and ev.get("dynamic"):
        _dynamic_eval(ev, cfg)
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt} does not exist; pass a run's "
                          f"checkpoints/last.ckpt, or ckpt_path=null to start fresh")


def _dynamic_eval(ev: DictConfig, cfg: DictConfig) -> None:
    _positive_int("eval.window", ev.get("window"))
    for key, low, high in (("lr", 0.0, None), ("decay", 0.0, 1.0)):
        values = ev.get(key)
        values = list(values) if isinstance(values, ListConfig) else [values]
        bad = [v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool)
               or v < low or (high is not None and v >= high) or (key == "lr" and v == 0)]
        if not values or bad:
            rule, example = ("positive numbers", "0.001,0.003") if key == "lr" else \
                ("numbers in [0, 1)", "0,0.01")
            raise ConfigError(f"eval.{key}={values} must be {rule} (one, or a list to choose "
                              f"from on val), e.g. eval.{key}=[{example}]")
    _scores_the_tested_checkpoint(cfg, "eval.dynamic", "its learning rate")


def _scores_the_tested_checkpoint(cfg: DictConfig, key: str, choice: str) -> None:
    """An evaluation of the tested checkpoint that makes its choice on val."""
    if not cfg.get("test", True):
        raise ConfigError(f"{key} scores the tested (best) checkpoint: it needs test=true")
    splits = cfg.data.get("splits")
    if splits is not None and (len(splits) < 2 or not splits[1] > 0):
        raise ConfigError(f"{key} chooses {choice} on the validation split, but "
                          f"data.splits={list(splits)} has none; give val a fraction")


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
