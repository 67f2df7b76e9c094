"""Checks of settings that need nothing but the values: no torch, no Lightning, no corpus.

    from rnnlab.config.checks import config_problem
    config_problem(cfg)   # "data.sampling='randm' is unknown; use one of [...]" or None

`config.cli.check_command_line` calls `config_problem` on the composed config before Hydra
makes a run dir and before torch is imported, so a bad value costs a fraction of a second. The
constructors (TextDataModule, SeriesDataModule, LanguageModel, the cores) call the same
functions, so each rule has one copy. What needs Lightning (devices, world size:
`training.distributed.check_distributed`) or the data and model (`training.preflight`) is
checked when the run starts.

The CPU's bf16 support is read from /proc/cpuinfo's flags (`cpu_flags`) for the same reason:
`bf16_problem` names what a CPU lacks for bf16 autocast through oneDNN.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path

from rnnlab.errors import ConfigError

PREPROCESS = ("letters", "unicode_letters", "none")
TOKENS = ("char", "word")
SAMPLING = ("random", "sequential")
WINDOWS = ("regular", "randomized", "full")
CORE_KINDS = ("rnn", "gru", "lstm")
# Lightning 2.x's precision values (ints as the YAML gives them), and ours: auto
PRECISIONS = ("auto", "64-true", "64", "32-true", "32", "16-true", "16-mixed", "16",
              "bf16-true", "bf16-mixed", "bf16", "transformer-engine",
              "transformer-engine-float16", 16, 32, 64)
# oneDNN's bf16 kernels (its reorders, its LSTM primitive) need one of these on x86
BF16_ISA = (("avx_ne_convert",), ("avx512bw", "avx512vl", "avx512dq"))
BF16_UNITS = ("avx512_bf16", "amx_bf16")  # bf16 products in hardware: what makes auto pick bf16


def choice(key: str, value, allowed: Iterable) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is unknown; use one of {allowed}")


def positive_int(key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive integer")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- what the constructors check (they call these) --------------------------------------------
def text_data(preprocess: str = "letters", token: str = "char", sampling: str = "sequential",
              windows: str = "regular", batch_size: int = 32, num_steps: int = 35,
              eval_num_steps: int | None = None, pin_memory: bool | None = None,
              splits: Iterable[float] = (0.9, 0.05, 0.05), **_) -> None:
    """text.datamodule.TextDataModule's settings."""
    for key, value, allowed in (("preprocess", preprocess, PREPROCESS), ("token", token, TOKENS),
                                ("sampling", sampling, SAMPLING), ("windows", windows, WINDOWS)):
        choice(f"data.{key}", value, allowed)
    for key, value in (("batch_size", batch_size), ("num_steps", num_steps),
                       ("eval_num_steps", eval_num_steps or num_steps)):
        positive_int(f"data.{key}", value)
    if pin_memory not in (None, True, False):
        raise ConfigError(f"data.pin_memory={pin_memory!r} must be true, false or null "
                          "(null: pinned when training on a GPU)")
    if windows == "full" and sampling != "sequential":
        raise ConfigError("bptt=full backpropagates through whole streams and needs "
                          f"data.sampling=sequential, not {sampling!r}")
    splits = list(splits)
    if len(splits) != 3 or not all(_number(s) for s in splits) or min(splits) < 0 \
            or splits[0] <= 0 or abs(sum(splits) - 1) > 1e-6:
        raise ConfigError(f"data.splits={splits} must be 3 non-negative fractions "
                          f"(train > 0) summing to 1, e.g. [0.9, 0.05, 0.05]")


def series_data(T: int = 1000, noise: float = 0.2, tau: int = 4, n_train: int = 600,
                batch_size: int = 16, window: int | None = None, **_) -> None:
    """forecast.series.SeriesDataModule's settings."""
    for key, value in (("T", T), ("tau", tau), ("n_train", n_train), ("batch_size", batch_size)):
        positive_int(f"data.{key}", value)
    if n_train + tau >= T:
        raise ConfigError(f"data.n_train + data.tau = {n_train + tau} leaves no held-out "
                          f"points in a series of data.T={T}; lower n_train or raise T")
    if window is not None and not 0 < window < n_train + tau:
        raise ConfigError(f"window={window} (latent.window) must be in 1..{n_train + tau - 1}"
                          f" (the training points, n_train + tau, minus one)")
    if not _number(noise) or noise < 0:
        raise ConfigError(f"data.noise={noise} must be >= 0 (a standard deviation)")


def language_model(dropout: float = 0.0, keep_prob: float = 1.0,
                   embedding_dim: int | None = None, eval_chunks: int = 1,
                   eval_burn_in: int = 0) -> None:
    """rnnlab.models.lm.LanguageModel's settings."""
    positive_int("model.eval_chunks", eval_chunks)
    if not isinstance(eval_burn_in, int) or isinstance(eval_burn_in, bool) or eval_burn_in < 0:
        raise ConfigError(f"model.eval_burn_in={eval_burn_in!r} must be a whole number >= 0 "
                          "(tokens a held-out row reads before it scores; 128 is the default)")
    if not _number(dropout) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
    if not _number(keep_prob) or not 0.0 < keep_prob <= 1.0:
        raise ConfigError(f"bptt.keep_prob={keep_prob} must be in (0, 1]")
    if embedding_dim is not None:
        positive_int("model.embedding_dim", embedding_dim)


def core(kind: str | None = None, num_hiddens: int = 512, num_layers: int = 1,
         cpu_kernel: str = "rnnlab") -> None:
    """rnnlab.models.cores' settings (ScratchRNN has no kind, layers or cpu_kernel)."""
    if kind is not None:
        choice("model.core.kind", kind, CORE_KINDS)
    positive_int("model.core.num_hiddens", num_hiddens)
    positive_int("model.core.num_layers", num_layers)
    if cpu_kernel not in ("rnnlab", "torch"):
        raise ConfigError(f"model.core.cpu_kernel={cpu_kernel!r}: use 'rnnlab' or 'torch'")


def temperature(value) -> None:
    """rnnlab.models.generate's sampling temperature."""
    if not _number(value) or value < 0:
        raise ConfigError(f"temperature={value} must be >= 0 (0 = greedy)")


# ---- the CPU's bf16 ---------------------------------------------------------------------------
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The first processor's flags in /proc/cpuinfo; None where there is no such file or line
    (not Linux, not x86): nothing is then refused on their account."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def bf16_problem(flags: set[str] | None = None) -> str | None:
    """What this CPU lacks for bf16 autocast (oneDNN's bf16 reorders and its LSTM primitive
    need avx_ne_convert, or avx512bw + avx512vl + avx512dq), or None where it can run it."""
    flags = cpu_flags() if flags is None else flags
    if flags is None or "sse2" not in flags:  # unknown, or not x86: oneDNN's rule is x86's
        return None
    if any(all(f in flags for f in isa) for isa in BF16_ISA):
        return None
    missing = [f for f in BF16_ISA[1] if f not in flags]
    return (f"this CPU has no bf16 support for oneDNN (it lacks avx_ne_convert, and "
            f"{', '.join(missing)} of avx512bw+avx512vl+avx512dq)")


def bf16_units(flags: set[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX) and can run it."""
    flags = cpu_flags() if flags is None else flags
    return flags is not None and any(f in flags for f in BF16_UNITS) \
        and bf16_problem(flags) is None


def precision(value, accelerator: str | None) -> None:
    """trainer.precision: one of Lightning's values or auto; bf16 on the CPU only where the
    CPU can run it (accelerator=cpu here; accelerator=auto is checked once torch knows)."""
    choice("trainer.precision", value, PRECISIONS)
    if accelerator == "cpu" and "bf16" in str(value) and (problem := bf16_problem()):
        raise ConfigError(f"trainer.precision={value}: {problem}; use trainer.precision=32-true "
                          f"(or auto, which picks bf16 only where it runs)")


# ---- the train config -------------------------------------------------------------------------
def _get(node, key: str, default=None):
    return node.get(key, default) if isinstance(node, Mapping) or hasattr(node, "get") \
        else default


def _kwargs(node, check) -> dict:
    """The node's values that `check` takes (others may hold interpolations only Hydra's
    runtime resolves)."""
    return {k: node[k] for k in inspect.signature(check).parameters if k in node}


def train_config(cfg) -> None:
    """The settings of scripts/train.py's config that need no data, model or Lightning."""
    data, model, trainer = cfg.data, cfg.model, cfg.trainer
    choice("bptt", cfg.bptt.mode, WINDOWS)
    for key in ("eval_batch_size", "max_tokens"):
        if _get(data, key) is not None:
            positive_int(f"data.{key}", data[key])
    if cfg.get("torch_threads") is not None:
        positive_int("torch_threads", cfg.torch_threads)
    if data.get("min_freq") is not None and (not _number(data.min_freq) or data.min_freq < 0):
        raise ConfigError(f"data.min_freq={data.min_freq} must be >= 0")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not _number(clip) or clip < 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} must be >= 0, or null for no "
                          f"clipping")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if accumulate != 1:  # the monitor's train/ppl and tokens are per optimizer step of 1 batch
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r} is not supported "
                          f"(train/ppl would be wrong): use 1, and a larger data.batch_size "
                          f"for a larger batch")
    precision(trainer.get("precision", "32-true"), trainer.get("accelerator"))
    language_model(model.get("dropout", 0.0), cfg.bptt.get("keep_prob", 1.0),
                   model.get("embedding_dim"))
    mix = cfg.get("ngram_mix")
    if mix is not None:
        if not hasattr(mix, "keys") or set(mix) - {"order", "online", "words"}:
            raise ConfigError(f"ngram_mix={mix!r} must be null or {{order: N, online: bool, "
                              f"words: N or null}}, e.g. ngram_mix.order=10")
        positive_int("ngram_mix.order", mix.get("order", 10))
        if not isinstance(mix.get("online", False), bool):
            raise ConfigError(f"ngram_mix.online={mix.online} must be true or false")
        if mix.get("words") is not None:
            positive_int("ngram_mix.words", mix.words)
            if not mix.get("online"):
                raise ConfigError(f"ngram_mix.words={mix.words} is an expert of the online "
                                  f"mixture: set ngram_mix.online=true too")
            if cfg.data.get("token", "char") != "char":
                raise ConfigError(f"ngram_mix.words={mix.words} reads words by characters; "
                                  f"data.token={cfg.data.token!r}: set ngram_mix.words=null")
        _scores_the_tested_checkpoint(cfg, "ngram_mix", "its weight")
    ev = cfg.get("eval")
    if ev is not None and ev.get("dynamic"):
        _dynamic_eval(ev, cfg)
    if cfg.get("ckpt_path") is not None:
        checkpoint_path(cfg.ckpt_path, "or ckpt_path=null to start fresh")
    splits = data.get("splits")
    if splits is not None and len(splits) == 3 and all(_number(x) for x in splits):
        if splits[1] <= 0:
            raise ConfigError(f"data.splits={list(splits)} leaves no validation split; training "
                              f"keeps the checkpoint with the best val/ppl, so give val a "
                              f"fraction, e.g. data.splits=[0.9,0.05,0.05]")
        if splits[2] <= 0 and cfg.get("test", True):
            raise ConfigError(f"data.splits={list(splits)} leaves no test split, but test=true; "
                              f"give test a fraction, e.g. data.splits=[0.9,0.05,0.05], or set "
                              f"test=false")


def generate_checkpoint(cfg) -> None:
    """generate.py's ckpt_path: given (it has no default), and a checkpoint file."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise ConfigError("ckpt_path is not set; pass the checkpoint to generate from, e.g. "
                          "ckpt_path=outputs/runs/<date>/<time>/checkpoints/last.ckpt")
    checkpoint_path(cfg.ckpt_path)


def checkpoint_path(value, fix: str = "") -> None:
    """A `ckpt_path` must be a checkpoint file; a run dir or its checkpoints/ dir is answered
    with the file inside it to pass."""
    path = Path(str(value)).expanduser()
    if path.is_file():
        return
    if path.is_dir():
        inside = next((p for p in (path / "checkpoints" / "last.ckpt", path / "last.ckpt")
                       if p.is_file()), None)
        where = f"pass ckpt_path={inside}" if inside else "pass a .ckpt file inside it"
        raise ConfigError(f"ckpt_path={value} is a directory; {where}")
    raise ConfigError(f"ckpt_path={value} does not exist; pass a run's checkpoints/last.ckpt"
                      + (f", {fix}" if fix else ""))


def _dynamic_eval(ev, cfg) -> None:
    positive_int("eval.window", ev.get("window"))
    if not isinstance(ev.get("krause", False), bool):
        raise ConfigError(f"eval.krause={ev.krause} must be true or false")
    grids = [("lr", 0.0, None), ("decay", 0.0, 1.0)]
    if ev.get("krause"):
        grids += [("krause_lr", 0.0, None), ("krause_decay", 0.0, 1.0)]
    for key, low, high in grids:
        values = ev.get(key)
        values = list(values) if isinstance(values, Iterable) and not isinstance(values, str) \
            else [values]
        bad = [v for v in values if not _number(v) or v < low
               or (high is not None and v >= high) or (key.endswith("lr") and v == 0)]
        if not values or bad:
            rule, example = ("positive numbers", "0.001,0.003") if key.endswith("lr") else \
                ("numbers in [0, 1)", "0,0.01")
            raise ConfigError(f"eval.{key}={values} must be {rule} (one, or a list to choose "
                              f"from on val), e.g. eval.{key}=[{example}]")
    _scores_the_tested_checkpoint(cfg, "eval.dynamic", "its learning rate")


def _scores_the_tested_checkpoint(cfg, key: str, choice: str) -> None:
    """An evaluation of the tested checkpoint that makes its choice on val."""
    if not cfg.get("test", True):
        raise ConfigError(f"{key} scores the tested (best) checkpoint: it needs test=true")
    splits = cfg.data.get("splits")
    if splits is not None and (len(splits) < 2 or not splits[1] > 0):
        raise ConfigError(f"{key} chooses {choice} on the validation split, but "
                          f"data.splits={list(splits)} has none; give val a fraction")


# ---- any script's config ----------------------------------------------------------------------
TARGETS = {"rnnlab.text.datamodule.TextDataModule": text_data,
           "rnnlab.forecast.series.SeriesDataModule": series_data}


def config_problem(cfg) -> str | None:
    """The first bad value of a composed config (any script's), as one line; None if none is
    found. Each part is checked where the config has it."""
    try:
        data = cfg.get("data")
        if data is not None and (check := TARGETS.get(data.get("_target_"))):
            check(**_kwargs(data, check))
        model = cfg.get("model")
        core_node = model.get("core") if model is not None else None
        if core_node is not None and hasattr(core_node, "keys"):
            core(**{k: core_node[k] for k in ("kind", "num_hiddens", "num_layers", "cpu_kernel")
                    if k in core_node})
        if cfg.get("bptt") is not None and data is not None and model is not None:
            train_config(cfg)
        elif cfg.get("torch_threads") is not None:
            positive_int("torch_threads", cfg.torch_threads)
        if cfg.get("trainer") is not None and cfg.get("bptt") is None:
            precision(cfg.trainer.get("precision", "32-true"), cfg.trainer.get("accelerator"))
        for key in ("num_preds",):
            if cfg.get(key) is not None:
                positive_int(key, cfg[key])
        if cfg.get("temperature") is not None:
            temperature(cfg.temperature)
        # generate.py; keys(): `in` is False for a missing (???) value, the case to answer
        if cfg.get("bptt") is None and "ckpt_path" in cfg.keys():  # noqa: SIM118
            generate_checkpoint(cfg)
    except ConfigError as e:
        return str(e)
    return None
