"""Config checks made once, before any data is downloaded or any model is built.

Each failure is a `ConfigError` whose one-line message names the key, the bad value and the fix;
scripts print it without a traceback and exit with status 2.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig


class ConfigError(ValueError):
    pass


def _choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is unknown; use one of {list(allowed)}")


def _positive_int(key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")


def validate_config(cfg: DictConfig) -> None:
    """What the constructors do not check themselves (TextDataModule checks its own names,
    sizes and splits when it is built, which is before any data is read)."""
    from rnnlab.data import WINDOWS  # torch: here, not in every importer (a sweep's main process)

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
        if not cfg.get("test", True):
            raise ConfigError("ngram_mix scores the tested (best) checkpoint: it needs test=true")
        splits = data.get("splits")
        if splits is not None and (len(splits) < 2 or not splits[1] > 0):
            raise ConfigError(f"ngram_mix chooses its weight on the validation split, but "
                              f"data.splits={list(splits)} has none; give val a fraction")
    ev = cfg.get("eval")
    if ev is not None and ev.get("dynamic"):
        _dynamic_eval(ev, cfg, data)
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path={ckpt} does not exist; pass a run's "
                          f"checkpoints/last.ckpt, or ckpt_path=null to start fresh")


def _dynamic_eval(ev: DictConfig, cfg: DictConfig, data: DictConfig) -> None:
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
    if not cfg.get("test", True):
        raise ConfigError("eval.dynamic scores the tested (best) checkpoint: it needs test=true")
    splits = data.get("splits")
    if splits is not None and (len(splits) < 2 or not splits[1] > 0):
        raise ConfigError(f"eval.dynamic chooses its learning rate on the validation split, but "
                          f"data.splits={list(splits)} has none; give val a fraction")


def full_bptt_bytes(batch_size: int, stream_len: int, num_hiddens: int, vocab_size: int,
                    num_layers: int = 1, gates: int = 1) -> int:
    """Activation memory autograd keeps for one backward through whole streams (float32):
    per step and row, the saved hidden states and gate activations of every layer, plus the
    one-hot input and the logits, softmax and their gradients over the vocabulary."""
    per_token = num_layers * num_hiddens * (2 + 2 * gates) + 4 * vocab_size
    return 4 * batch_size * stream_len * per_token
