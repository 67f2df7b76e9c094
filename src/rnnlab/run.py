"""One training run from a composed Hydra config: validate, build, fit, test, write summary.json.

    from rnnlab.run import train
    metric = train(cfg)          # best val/ppl; what scripts/train.py returns to sweepers

Whatever happens (finished, diverged, interrupted by SIGINT/SIGTERM, or an error) the run dir ends
with a summary.json saying so, and checkpoints are written atomically (temp file + rename).
"""

from __future__ import annotations

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
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO

from rnnlab.validate import ConfigError, full_bptt_bytes, validate_config

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same dir, then rename: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


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

    def on_fit_start(self, trainer, pl_module) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_fit_end(self, trainer, pl_module) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is not None and not trainer.should_stop:
            trainer.should_stop = True
            trainer.save_checkpoint(self.ckpt_dir / "last.ckpt")


def _overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed without Hydra's runtime (tests)
        return []


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def write_summary(out_dir: Path, summary: dict) -> Path:
    path = out_dir / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)
    return path


def train(cfg: DictConfig) -> float:
    """Fit and test one model; returns the best val/ppl (inf when there is none)."""
    validate_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    pl.seed_everything(cfg.seed, workers=True)
    started = time.time()
    summary: dict = {"status": "failed", "overrides": _overrides(), "run_dir": str(out_dir),
                     "model": cfg.model.core.get("kind", "rnn_scratch"), "bptt": cfg.bptt.mode,
                     "sampling": cfg.data.sampling, "seed": cfg.seed, "diverged": False}

    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    if cfg.bptt.windows == "full":
        check_full_bptt_memory(cfg, len(dm.corpus["train"]), len(dm.vocab))
    model = instantiate(cfg.model, vocab_size=len(dm.vocab))
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_dir = out_dir / "checkpoints"
    stopper = StopOnSignal(ckpt_dir)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [stopper]
    interactive = sys.stdout.isatty()
    if interactive:
        callbacks.append(RichProgressBar())
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers,
                                      plugins=[AtomicCheckpointIO()],
                                      enable_progress_bar=interactive)
    ckpt_cb = trainer.checkpoint_callback
    try:
        if cfg.get("train", True):
            trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        stats = model.run_stats()
        status = ("diverged" if stats["diverged"] else
                  "interrupted" if stopper.received else "finished")
        best = float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score is not \
            None else _metric(trainer, "val/ppl")
        summary.update(stats, status=status, best_val_ppl=best,
                       final_val_ppl=_metric(trainer, "val/ppl"),
                       train_ppl=_metric(trainer, "train/ppl_epoch"),
                       tokens_per_s=_metric(trainer, "train/tokens_per_s_epoch"),
                       epochs=trainer.current_epoch, global_step=trainer.global_step)
        if cfg.get("test", True) and status != "interrupted":
            best_path = ckpt_cb.best_model_path if ckpt_cb and ckpt_cb.best_model_path else None
            trainer.test(model, datamodule=dm, ckpt_path=best_path, weights_only=False)
            summary["test_ppl"] = _metric(trainer, "test/ppl")
            summary["test_ckpt"] = best_path
        for lg in loggers:
            if hasattr(lg, "log_hyperparams") and best is not None:
                lg.log_hyperparams(_hparams(cfg), {"hp_metric": best})
    except BaseException as e:
        summary["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - started, 2)
        summary["checkpoints"] = {"best": ckpt_cb.best_model_path if ckpt_cb else None,
                                  "last": str(ckpt_dir / "last.ckpt")
                                  if (ckpt_dir / "last.ckpt").exists() else None}
        write_summary(out_dir, summary)
        log.info("summary: %s", json.dumps({k: v for k, v in summary.items()
                                            if k not in ("overrides", "checkpoints")}))
    best = summary.get("best_val_ppl")
    return best if best is not None and math.isfinite(best) else float("inf")


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


def _hparams(cfg: DictConfig) -> dict:
    """The knobs worth a column in TensorBoard's hparams tab."""
    keys = {"model": cfg.model.core.get("kind", "rnn_scratch"), "bptt": cfg.bptt.mode,
            "sampling": cfg.data.sampling, "clip": str(cfg.trainer.gradient_clip_val),
            "lr": cfg.model.optimizer.get("lr"), "hidden": cfg.model.core.num_hiddens,
            "batch_size": cfg.data.batch_size, "num_steps": cfg.data.num_steps,
            "seed": cfg.seed}
    return {k: v for k, v in keys.items() if v is not None}
