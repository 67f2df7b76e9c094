"""One training run from a composed Hydra config: validate, build, fit, test, write summary.json.

    from rnnlab.run import train
    metric = train(cfg)          # best val/ppl; what scripts/train.py returns to sweepers

Whatever happens (finished, diverged, interrupted by SIGINT/SIGTERM, or an error) the run dir ends
with a summary.json saying so, and checkpoints are written atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import RichProgressBar, Timer
from pytorch_lightning.plugins.io import TorchCheckpointIO

from rnnlab import kernels
from rnnlab.cli import build, save_config
from rnnlab.evaluation import evaluate_dynamic
from rnnlab.mixture import evaluate_mixture
from rnnlab.monitor import TrainingMonitor
from rnnlab.tblogger import RunLogger
from rnnlab.validate import ConfigError, full_bptt_bytes, validate_config
from rnnlab.vocab import Vocab

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same dir, then rename: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class Interrupted(Exception):
    """Raised right after the signal's checkpoint is saved, so that nothing runs after it
    (Lightning would otherwise validate and save a checkpoint of a half epoch)."""


class StopOnSignal(pl.Callback):
    """SIGINT/SIGTERM: finish the current step, save last.ckpt, stop. A second signal kills."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir, self.received = ckpt_dir, None
        self._previous = {}

    def _handler(self, signum, frame) -> None:
        if self.received is not None:  # second signal: the user means it
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        log.warning("%s received: saving last.ckpt after this step, then stopping", self.received)

    def on_train_start(self, trainer, pl_module) -> None:
        # installed after Lightning's own SIGTERM handler (which would raise SIGTERMException
        # and exit 0 without a summary), replacing it for the duration of training
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_train_end(self, trainer, pl_module) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None:
            trainer.save_checkpoint(self.ckpt_dir / "last.ckpt")
            raise Interrupted(self.received)


def torch_threads(cfg: DictConfig) -> int:
    """`torch_threads` if set; in a parallel sweep cores // n_jobs (so jobs never oversubscribe
    the machine); otherwise torch's default."""
    if cfg.get("torch_threads"):
        return int(cfg.torch_threads)
    try:
        n_jobs = HydraConfig.get().launcher.get("n_jobs")
    except ValueError:
        n_jobs = None
    cores = os.cpu_count() or 1
    if n_jobs:
        return max(1, cores // (cores if n_jobs < 0 else n_jobs))
    return torch.get_num_threads()


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory instead of unmapping it: a training step frees and
    re-allocates the same large activation buffers (18 MB each at batch 256), and a fresh mapping
    is page-faulted back in on every step (about 4% of a step on an AMD EPYC). The process keeps
    its peak heap until it exits. Returns False where this is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def _overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed without Hydra's runtime (tests)
        return []


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def _json_safe(value):
    """inf/NaN become null: they are not JSON, and jq or other readers would choke on them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_summary(out_dir: Path, summary: dict) -> Path:
    path = out_dir / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(summary), indent=2, default=str))
    os.replace(tmp, path)
    return path


def train(cfg: DictConfig) -> float:
    """Fit and test one model; returns the best val/ppl (inf when there is none), or with
    `eval.dynamic` and/or `ngram_mix` set, the val/ppl of the strongest of those evaluations."""
    out_dir = _run_dir(cfg)
    summary: dict = {"status": "running", "overrides": _overrides(), "run_dir": str(out_dir),
                     "model": cfg.model.core.get("kind", "rnn_scratch"), "bptt": cfg.bptt.mode,
                     "sampling": cfg.data.sampling, "seed": cfg.seed, "diverged": False}
    write_summary(out_dir, summary)
    started = time.time()
    try:
        validate_config(cfg)
        stopper = _fit_and_test(cfg, out_dir, summary)
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - started, 2)
        summary["kernels"] = kernels.made()  # the timed CPU kernel choices this run used
        write_summary(out_dir, summary)
        log.info("summary: %s", json.dumps({k: v for k, v in summary.items()
                                            if k not in ("overrides", "checkpoints")}))
    if stopper.received:  # stop here, and stop a sweep too: the user asked for it
        raise SystemExit(128 + signal.Signals[stopper.received].value)
    best = next((summary[k] for k in ("val_ppl_dyn_mix", "val_ppl_mix", "val_ppl_dyn")
                 if summary.get(k) is not None), summary.get("best_val_ppl"))
    return best if best is not None and math.isfinite(best) else float("inf")


def _run_dir(cfg: DictConfig) -> Path:
    """This run's dir; a resumed run goes on in its checkpoint's run dir (logs, curves, summary)."""
    if cfg.get("ckpt_path"):
        run_dir = Path(cfg.ckpt_path).resolve().parent.parent
        if (run_dir / "config.yaml").is_file():
            with open_dict(cfg):
                cfg.paths.output_dir = str(run_dir)
            log.info("resuming %s in its run dir %s", cfg.ckpt_path, run_dir)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _fit_and_test(cfg: DictConfig, out_dir: Path, summary: dict) -> StopOnSignal:
    with open_dict(cfg):  # auto: bf16-mixed on a CPU with bf16 matrix units
        cfg.trainer.precision = kernels.resolve_precision(cfg.trainer.get("precision", "32-true"),
                                                          cfg.trainer.get("accelerator", "auto"))
    summary["precision"] = cfg.trainer.precision
    save_config(cfg, out_dir)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    torch.set_num_threads(torch_threads(cfg))
    summary["torch_threads"] = torch.get_num_threads()
    kernels.configure(**cfg.get("kernels", {}))
    keep_freed_memory()
    pl.seed_everything(cfg.seed, workers=True)
    dm = build(cfg.data)
    dm.prepare_data()
    dm.setup()
    if cfg.bptt.mode == "full":
        check_full_bptt_memory(cfg, len(dm.corpus["train"]), len(dm.vocab))
    model = build(cfg.model, vocab_size=len(dm.vocab))
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(Path(cfg.ckpt_path), model, dm.vocab)
    ckpt_dir = out_dir / "checkpoints"
    stopper, monitor = StopOnSignal(ckpt_dir), TrainingMonitor()
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values()] + [stopper, monitor]
    interactive = sys.stdout.isatty()
    callbacks += [RichProgressBar()] if interactive else []
    loggers = [build(c) for c in (cfg.get("logger") or {}).values()]
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers,
                                      plugins=[AtomicCheckpointIO()], _convert_="all",
                                      enable_progress_bar=interactive)
    ckpt_cb = trainer.checkpoint_callback

    def record(**kw) -> None:
        last = ckpt_dir / "last.ckpt"
        summary.update(kw, checkpoints={"best": ckpt_cb.best_model_path if ckpt_cb else None,
                                        "last": str(last) if last.exists() else None})

    if cfg.get("train", True):
        with contextlib.suppress(Interrupted):  # last.ckpt is saved; the summary says so
            trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    stats = monitor.run_stats()
    status = "diverged" if stats["diverged"] else "interrupted" if stopper.received else "finished"
    best = float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score is not None \
        else _metric(trainer, "val/ppl")
    record(**stats, status=status, best_val_ppl=best, final_val_ppl=_metric(trainer, "val/ppl"),
           train_ppl=_metric(trainer, "train/ppl_epoch"),
           tokens_per_s=_metric(trainer, "train/tokens_per_s_epoch"),
           epochs=trainer.current_epoch, global_step=trainer.global_step,
           max_time_cut=max_time_cut(trainer))
    if cfg.get("test", True) and status != "interrupted":
        best_path = ckpt_cb.best_model_path if ckpt_cb and ckpt_cb.best_model_path else None
        trainer.test(model, datamodule=dm, ckpt_path=best_path, weights_only=False)
        record(test_ppl=_metric(trainer, "test/ppl"), test_ckpt=best_path)
        extra, dynamic = {}, None
        if cfg.get("eval") and cfg.eval.dynamic:  # the tested weights adapt to the text they score
            found, dynamic = evaluate_dynamic(model, dm.corpus, cfg.eval.lr, cfg.eval.decay,
                                              cfg.eval.window)
            extra.update(found)
        if cfg.get("ngram_mix"):  # the tested (best) weights, mixed with a Kneser-Ney n-gram
            extra.update(evaluate_mixture(model, dm.corpus, len(dm.vocab), **cfg.ngram_mix,
                                          dynamic=dynamic))
        for lg in loggers if extra else []:
            lg.log_metrics(extra, step=trainer.global_step)
        record(**{key.replace("/ppl_", "_ppl_"): value for key, value in extra.items()})
    for lg in loggers:
        if isinstance(lg, RunLogger):  # the HParams tab's row for this run
            lg.log_session(cfg, summary, step=trainer.global_step)
    return stopper


def max_time_cut(trainer: pl.Trainer) -> bool:
    """Whether `trainer.max_time` (a guard; budgets are in epochs or steps) ended training."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    left = timer.time_remaining("train") if timer is not None else None
    if left is not None and left <= 0:
        log.warning("trainer.max_time stopped training at step %d, before its budget in "
                    "epochs/steps: this run is not comparable with an uninterrupted one",
                    trainer.global_step)
        return True
    return False


def check_resume_checkpoint(path: Path, model: pl.LightningModule, vocab: Vocab) -> None:
    """Refuse, with the reason, a checkpoint that is corrupt or from another model/vocabulary."""
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
