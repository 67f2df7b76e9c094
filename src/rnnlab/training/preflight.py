"""Checks a run makes before and once its data and model exist: a resume takes the run's own
settings, its checkpoint belongs to this model and vocabulary, and full BPTT's activations fit in
memory. (Checks of values alone are made before torch is imported: `config.checks`.)

    taken = resume_settings(cfg, job_overrides())   # ckpt_path=<run>/checkpoints/last.ckpt alone
    check_resume_checkpoint(path, model, vocab)      # once the data and the model are built

A resume (`ckpt_path=...`) takes every setting from the run it continues (its config.yaml, or the
config inside the checkpoint), so the command line needs nothing else; an override on the command
line may change only what leaves the trained weights' meaning alone (RESUME_MAY_CHANGE: the
budget, logging, paths, threads, evaluation after training). Any other override that differs from
the run is refused in one line listing each key, the run's value and the new one.

Each failure is a `ConfigError` whose one-line message names the key, the bad value and the fix;
scripts print it without a traceback and exit with status 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from rnnlab.config.overrides import split_override
from rnnlab.config.saved import flatten
from rnnlab.errors import ConfigError
from rnnlab.training.relaunch import comparable

if TYPE_CHECKING:
    from torch import nn

    from rnnlab.text.vocab import Vocab

log = logging.getLogger(__name__)

# what a resumed run may set anew: the budget, logging, where files are, threads, and scoring
# after training; the data path too (the vocabulary check then tells whether it is the same text)
RESUME_MAY_CHANGE = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time",
                     "trainer.log_every_n_steps", "trainer.enable_model_summary", "logger",
                     "paths", "torch_threads", "print_config", "ckpt_path", "retry_failed",
                     "train", "test", "eval", "ngram_mix", "data.path", "data.data_dir",
                     "data.num_workers", "callbacks.sample_text", "callbacks.checkpoint.filename")
# groups that set keys all over the config (@package _global_): any difference may be theirs
GLOBAL_GROUPS = ("experiment", "ablation", "hparams_search")
_ABSENT = object()


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def saved_run_config(ckpt_path: Path) -> dict | None:
    """The config of the run a checkpoint belongs to: its run dir's config.yaml, else the one
    inside the checkpoint; None when neither can be read (the checkpoint check says why)."""
    saved = ckpt_path.resolve().parent.parent / "config.yaml"
    try:
        if saved.is_file():
            return yaml.safe_load(saved.read_text()) or None
        import torch
        return torch.load(ckpt_path, map_location="cpu", weights_only=False).get("run_config")
    except Exception:  # noqa: BLE001 - check_resume_checkpoint names the problem
        return None


def resume_settings(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Make `cfg` the config of the run `cfg.ckpt_path` continues: each key that differs from
    the run and was not set on the command line (`overrides`) takes the run's value. Raises
    ConfigError, listing them, when overrides change keys outside RESUME_MAY_CHANGE. Returns
    the keys taken from the run."""
    path = Path(cfg.ckpt_path)
    saved = saved_run_config(path)
    if not isinstance(saved, dict):
        return []
    old, new = (flatten(comparable(c), lists=False) for c in (saved, cfg))
    # an interpolation (`${seed}`, `${paths.output_dir}/checkpoints`) follows what it points at,
    # which is compared itself (or, like paths, may change)
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k, _ABSENT) != new.get(k, _ABSENT)
              and not _interpolated(cfg, k)]
    set_keys = [split_override(o)[0] for o in overrides]
    everywhere = any(k in GLOBAL_GROUPS for k in set_keys)
    by_user = [k for k in differ if everywhere or _under(k, set_keys)]
    refused = [k for k in by_user if not _under(k, RESUME_MAY_CHANGE)]
    if refused:
        shown = "; ".join(f"{k}: {old.get(k, '(absent)')} in the run, {new.get(k, '(absent)')} "
                          f"now" for k in refused[:4]) + ("; ..." if len(refused) > 4 else "")
        raise ConfigError(
            f"ckpt_path={path} continues a run trained with other settings ({shown}); drop "
            f"these overrides (ckpt_path alone takes every setting from the run), or start a new "
            f"run without ckpt_path. A resume may change only {', '.join(RESUME_MAY_CHANGE[:3])}, "
            f"logging, paths, threads and the scoring after training")
    taken = [k for k in differ if k not in by_user]
    with open_dict(cfg):
        for key in taken:
            if key in old:
                OmegaConf.update(cfg, key, old[key], merge=False)
            elif _built_differently(key, old, new):  # a key of another class's arguments
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(cfg, parent) if parent else cfg
                if isinstance(node, DictConfig) and leaf in node:
                    del node[leaf]
    if taken:
        log.info("resuming with the run's own settings for %s", ", ".join(
            f"{k}={old[k]}" if k in old else f"~{k}" for k in taken))
    return taken


def _interpolated(cfg: DictConfig, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node and OmegaConf.is_interpolation(node,
                                                                                      leaf)


def _built_differently(key: str, old: dict, new: dict) -> bool:
    """Whether the nearest `_target_` above `key` names another class in the run."""
    parts = key.split(".")[:-1]
    while parts:
        target = ".".join(parts + ["_target_"])
        if target in old or target in new:
            return old.get(target) != new.get(target)
        parts.pop()
    return False


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
        raise ConfigError(f"ckpt_path={path} was trained on another vocabulary ("
                          f"{vocab_difference(ckpt['vocab']['idx_to_token'], vocab.idx_to_token)}"
                          f"); resume with the data it was trained with (data.path, "
                          f"data.preprocess, data.token, data.max_tokens, data.splits)")
    mine = model.state_dict()
    differ = sorted(k for k in set(mine) | set(theirs)
                    if k not in mine or k not in theirs or mine[k].shape != theirs[k].shape)
    if differ:
        raise ConfigError(f"ckpt_path={path} belongs to another model (parameters differ: "
                          f"{', '.join(differ[:4])}); resume with the model settings it was "
                          f"trained with (see config.yaml beside its checkpoints/)")


def vocab_difference(theirs: list[str], mine: list[str]) -> str:
    """What differs between two vocabularies, for a message: their sizes and the tokens only in
    one of them, or that the same tokens come in another order (other counts: other text)."""
    only_theirs = [t for t in theirs if t not in set(mine)]
    only_mine = [t for t in mine if t not in set(theirs)]
    show = lambda ts: ", ".join(repr(t) for t in ts[:5]) + (f" and {len(ts) - 5} more"
                                                            if len(ts) > 5 else "")
    parts = [f"{len(theirs)} tokens in the checkpoint, {len(mine)} in this data"]
    if only_theirs:
        parts.append(f"only in the checkpoint: {show(only_theirs)}")
    if only_mine:
        parts.append(f"only in this data: {show(only_mine)}")
    if not only_theirs and not only_mine:
        parts.append("the same tokens, ranked by other counts: another text or split")
    return "; ".join(parts)


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
