"""One training run from a composed Hydra config: validate, build, fit, test, write summary.json.

    from rnnlab.training.run import train
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
from lightning_fabric.utilities.seed import reset_seed
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import RichProgressBar, Timer

from rnnlab.config.build import build
from rnnlab.config.checks import checkpoint_path, train_config
from rnnlab.config.cli import is_multirun
from rnnlab.config.overrides import hydra_runtime, job_overrides
from rnnlab.config.saved import save_config
from rnnlab.errors import ConfigError
from rnnlab.evaluation.adaptive_eval import evaluate_adaptive, evaluate_dynamic_rules
from rnnlab.evaluation.mixture import evaluate_mixture
from rnnlab.evaluation.word_completion import WordCompletion
from rnnlab.kernels import choice as kernels
from rnnlab.training.checkpoints import AtomicCheckpointIO
from rnnlab.training.choices import KeepChoices, RunChoices
from rnnlab.training.distributed import (
    check_distributed,
    devices_per_node,
    end_job,
    env_rank,
    is_ddp,
    pack_gpu,
)
from rnnlab.training.monitor import TrainingMonitor
from rnnlab.training.preflight import (
    check_full_bptt_memory,
    check_resume_checkpoint,
    resume_settings,
)
from rnnlab.training.probe_callback import GradientsThroughTime
from rnnlab.training.relaunch import (
    carry_over,
    hold_job,
    objective,
    previous_run,
    read_summary,
)
from rnnlab.training.signals import Interrupted, StopOnSignal
from rnnlab.training.tblogger import RunLogger

log = logging.getLogger(__name__)


def torch_threads(cfg: DictConfig) -> int:
    """`torch_threads` if set; in a parallel sweep cores // n_jobs (so jobs never oversubscribe
    the machine); otherwise torch's default."""
    if cfg.get("torch_threads"):
        return int(cfg.torch_threads)
    hc = hydra_runtime()
    n_jobs = hc.launcher.get("n_jobs") if hc is not None else None
    cores = os.cpu_count() or 1
    if n_jobs:
        return max(1, cores // (cores if n_jobs < 0 else n_jobs))
    ranks = devices_per_node(cfg.trainer)  # DDP processes on this machine share its cores
    return max(1, cores // ranks) if ranks > 1 else torch.get_num_threads()


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory instead of unmapping it: a training step frees and
    re-allocates the same large activation buffers (18 MB each at batch 256), and a fresh mapping
    is page-faulted back in on every step (what that costs: docs/performance.md). The process
    keeps its peak heap until it exits. Returns False where this is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


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
    if cfg.get("ckpt_path"):  # a resume takes the run's own settings (training.preflight)
        checkpoint_path(cfg.ckpt_path)
        resume_settings(cfg, job_overrides())
    out_dir = _run_dir(cfg)
    rank0 = env_rank(cfg.trainer) == 0  # under DDP only rank 0 writes summary.json/config.yaml
    # held while this job runs: a second launch of the sweep leaves the job alone
    lock = hold_job(out_dir) if rank0 else None
    try:
        return _train(cfg, out_dir, rank0)
    finally:
        if lock is not None:
            lock.close()


def _train(cfg: DictConfig, out_dir: Path, rank0: bool) -> float:
    # a sweep launched again (or a requeued cluster job) finds its earlier launch's job here
    earlier = read_summary(out_dir) if is_multirun() and not cfg.get("ckpt_path") else None
    if earlier is not None and (done := previous_run(cfg, out_dir, earlier)) is not None:
        return done
    summary: dict = {"status": "running", "overrides": job_overrides(), "run_dir": str(out_dir),
                     "model": cfg.model.core.get("kind", "rnn_scratch"), "bptt": cfg.bptt.mode,
                     "sampling": cfg.data.sampling, "seed": cfg.seed, "diverged": False}
    path = out_dir / "summary.json"
    # a resume that is refused must leave the run it names as it was
    previous = path.read_text() if cfg.get("ckpt_path") and path.is_file() else None
    if rank0:
        write_summary(out_dir, summary)
    started, choices = time.time(), None
    try:
        train_config(cfg)  # already checked before torch by the command line; not by a caller
        check_distributed(cfg)  # devices, world size (Lightning)
        pack_gpu(cfg)
        choices = RunChoices.recorded_for(cfg, out_dir, relaunched=earlier is not None)
        stopper = _fit_and_test(cfg, out_dir, summary, rank0, choices)
        carry_over(summary, earlier if cfg.get("ckpt_path") else None)
    except (KeyboardInterrupt, SystemExit) as e:  # stopped (a second Ctrl-C, a requeue): not failed
        summary.update(status="interrupted", error=f"{type(e).__name__}: {e}")
        raise
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}")
        if not isinstance(e, ConfigError):
            previous = None
        raise
    finally:
        summary["wall_time_s"] = round(time.time() - started, 2)
        summary["kernels"] = kernels.made()  # the CPU kernel choices this run used
        if choices is not None and choices.precision is not None:
            summary["choices_from"] = choices.source  # None: decided (or cached) here
            if rank0:  # what a relaunch of this job that starts over uses again
                choices.write(out_dir)
        if rank0 and previous is not None and summary["status"] == "failed":
            path.write_text(previous)
        elif rank0:
            write_summary(out_dir, summary)
        end_job()  # DDP: the ranks this job started are done; the next job starts its own
        failed = summary["status"] == "failed"  # then the error line says it (log file: both)
        log.log(logging.DEBUG if failed else logging.INFO, "summary: %s", json.dumps(
            {k: v for k, v in summary.items() if k not in ("overrides", "checkpoints")
             and not k.startswith("grad_g_")}))
    # stop here, and stop a sweep too: the user asked for it. Ranks > 0 exit 0: Lightning's
    # observer kills every process when a child exits with an error, rank 0's summary included
    if stopper.received and rank0:
        log.warning("%s stopped the run; %s", stopper.received, resume_hint(out_dir))
        stopper.hand_over()  # a cluster's time-limit signal: submitit requeues the job (exits)
        raise SystemExit(128 + signal.Signals[stopper.received].value)
    return objective(summary)


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


def _fit_and_test(cfg: DictConfig, out_dir: Path, summary: dict, rank0: bool = True,
                  choices: RunChoices | None = None) -> StopOnSignal:
    choices = choices or RunChoices()
    # auto: bf16-mixed on a CPU with bf16 matrix units, or what the run recorded; the config
    # keeps "auto" (a relaunched sweep compares configs), choices.json and summary.json say
    # what it became
    precision = summary["precision"] = choices.resolve_precision(cfg.trainer)
    torch.set_num_threads(choices.threads(cfg, torch_threads(cfg)))
    if is_ddp(cfg.trainer) or devices_per_node(cfg.trainer) > 1:  # else Lightning's DDP
        # launcher sets cores // processes threads, whatever torch_threads said
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    summary["torch_threads"] = torch.get_num_threads()
    kernels.configure(**cfg.get("kernels", {}))
    choices.apply()
    keep_freed_memory()
    pl.seed_everything(cfg.seed, workers=True)
    dm = build(cfg.data)
    dm.prepare_data()
    dm.setup()
    summary["data"] = dm.describe()
    if rank0:
        log.info(data_line(summary["data"], dense_one_hot(cfg.model)))
    if cfg.bptt.mode == "full":
        check_full_bptt_memory(cfg, len(dm.corpus["train"]), len(dm.vocab))
    if cfg.get("ngram_mix") and cfg.ngram_mix.get("words"):  # before training, not after it
        has_words(cfg.ngram_mix, dm)
    model = build(cfg.model, vocab_size=len(dm.vocab))
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("ckpt_path"):
        check_resume_checkpoint(Path(cfg.ckpt_path), model, dm.vocab)
    if rank0:  # and into the log file (the console too with print_config=true)
        save_config(cfg, out_dir)
    ckpt_dir = out_dir / "checkpoints"
    stopper, monitor = StopOnSignal(ckpt_dir), TrainingMonitor()
    # the monitor first: its statistics take in the step the stopper then checkpoints
    callbacks = [build(c) for c in (cfg.get("callbacks") or {}).values()] + [
        monitor, KeepChoices(choices, out_dir, rank0), stopper]
    interactive = sys.stdout.isatty()
    callbacks += [RichProgressBar()] if interactive else []
    loggers = [build(c) for c in (cfg.get("logger") or {}).values()]
    trainer: pl.Trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers,
                                plugins=[AtomicCheckpointIO()], _convert_="all",
                                enable_progress_bar=interactive, precision=precision)
    ckpt_cb = trainer.checkpoint_callback
    if rank0 and (line := device_line(trainer, precision)):
        log.info(line)  # Lightning's availability lines go to the log file only

    def record(**kw) -> None:
        last = ckpt_dir / "last.ckpt"
        summary.update(kw, checkpoints={"best": ckpt_cb.best_model_path if ckpt_cb else None,
                                        "last": str(last) if last.exists() else None})

    if cfg.get("train", True):
        with contextlib.suppress(Interrupted):  # last.ckpt is saved; the summary says so
            reset_seed()  # what Lightning's DDP does after the model is built: same dropout draws
            trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    for probe in (c for c in callbacks if isinstance(c, GradientsThroughTime)):
        record(**probe.summary())  # the last gradients-through-time probe (grad_*)
    stats = monitor.run_stats()
    status = "diverged" if stats["diverged"] else "interrupted" if stopper.received else "finished"
    best = float(ckpt_cb.best_model_score) if ckpt_cb and ckpt_cb.best_model_score is not None \
        else _metric(trainer, "val/ppl")
    record(**stats, status=status, best_val_ppl=best, final_val_ppl=_metric(trainer, "val/ppl"),
           train_ppl=_metric(trainer, "train/ppl_epoch"),
           tokens_per_s=_metric(trainer, "train/tokens_per_s_epoch"),
           epochs=trainer.current_epoch, global_step=trainer.global_step,
           max_time_cut=max_time_cut(trainer))
    if cfg.get("test", True) and status != "interrupted":  # under DDP, on every rank
        best_path = ckpt_cb.best_model_path if ckpt_cb and ckpt_cb.best_model_path else None
        trainer.test(model, datamodule=dm, ckpt_path=best_path, weights_only=False)
        record(test_ppl=_metric(trainer, "test/ppl"), test_ckpt=best_path)
        extra, dynamic = {}, None
        if not trainer.is_global_zero:  # what follows is one process's work
            return stopper
        on_training_device(model, trainer)  # trainer.test's teardown left it on the CPU
        if cfg.get("eval") and cfg.eval.dynamic:  # the tested weights adapt to the text they score
            found, dynamic = evaluate_dynamic_rules(model, dm.corpus, cfg.eval)
            extra.update(found)
        if cfg.get("ngram_mix"):  # the tested (best) weights, mixed with a Kneser-Ney n-gram
            order = cfg.ngram_mix.get("order", 10)
            extra.update(evaluate_mixture(model, dm.corpus, len(dm.vocab), order, dynamic))
            if cfg.ngram_mix.get("online"):  # and the parts that learn while they score
                extra.update(evaluate_adaptive(model, dm.corpus, len(dm.vocab), order, dynamic,
                                               words=word_expert(cfg.ngram_mix, dm)))
        for lg in loggers if extra else []:  # not the settings of a grid with no finite one
            lg.log_metrics({k: v for k, v in extra.items() if isinstance(v, (int, float))},
                           step=trainer.global_step)
        record(**{key.replace("/ppl_", "_ppl_"): value for key, value in extra.items()})
    for lg in loggers:
        if isinstance(lg, RunLogger):  # the HParams tab's row for this run
            lg.log_session(cfg, summary, step=trainer.global_step)
    return stopper


def has_words(mix: DictConfig, dm) -> None:
    """`ngram_mix.words` needs character tokens with a space among them."""
    if dm.token != "char" or " " not in dm.vocab.token_to_idx:
        raise ConfigError(f"ngram_mix.words={mix.words} reads words between spaces of character "
                          f"tokens; this run's text has {dm.token} tokens and no ' ' among them: "
                          f"set ngram_mix.words=null")


def word_expert(mix: DictConfig, dm) -> WordCompletion | None:
    """`ngram_mix.words`' word n-gram of the training split, read by characters (words are the
    runs between spaces), or None."""
    if not mix.get("words"):
        return None
    has_words(mix, dm)
    return WordCompletion(dm.corpus["train"], dm.vocab[" "], len(dm.vocab), order=mix.words)


def dense_one_hot(model: DictConfig) -> bool:
    """Whether the core multiplies whole one-hot vectors (nn.GRU/LSTM, the book's plain loop)
    rather than looking rows up (the scratch RNN's fast path, our nn.RNN kernel on a CPU)."""
    core = model.core
    return not model.get("embedding_dim") and (core.get("kind") in ("gru", "lstm") or not core.get(
        "fast", True) or core.get("cpu_kernel") == "torch")


def data_line(data: dict, dense_one_hot: bool = False) -> str:
    """One console line on what the run is on (summary.json's "data" holds the same); for words
    fed to a core as dense one-hot vectors, the embedding that makes them cheap."""
    tokens, oov = data["tokens"], data["oov_rate"]
    line = (f"data: {data['path']} ({data['preprocess']}, {data['token']} tokens), vocabulary "
            f"{data['vocab_size']}, tokens train/val/test {tokens['train']:,}/{tokens['val']:,}/"
            f"{tokens['test']:,}, out of vocabulary {oov['train']:.2%}/{oov['val']:.2%}/"
            f"{oov['test']:.2%}")
    if data["token"] == "word" and dense_one_hot and data["vocab_size"] > 1000:
        line += (f"; one-hot inputs over {data['vocab_size']:,} words make every step slow: "
                 f"model.embedding_dim=128 gives the model an embedding")
    return line


def resume_hint(out_dir: Path) -> str:
    """How to go on with a stopped run (a sweep's job: launch the same sweep again)."""
    hc = hydra_runtime()
    if is_multirun() and hc is not None:
        return f"to finish the sweep, run the same command with hydra.sweep.dir={hc.sweep.dir}"
    return f"resume it with: python scripts/train.py ckpt_path={out_dir}/checkpoints/last.ckpt"


def device_line(trainer: pl.Trainer, precision: str | int) -> str | None:
    """One console line saying what the run uses, when it is not the plain CPU in float32
    (the GPU's name, the number of devices, the precision); None on the plain CPU."""
    device = trainer.strategy.root_device
    if device.type == "cpu" and str(precision) in ("32-true", "32") and trainer.num_devices == 1:
        return None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
    count = f"{trainer.num_devices} x " if trainer.num_devices > 1 else ""
    return f"training on {count}{name} ({device.type}), precision {precision}"


def on_training_device(model: torch.nn.Module, trainer: pl.Trainer) -> torch.device:
    """Move the model back to the device it trained on (Lightning's strategy teardown after
    trainer.test moves it to the CPU), so that dynamic evaluation and the n-gram mixture score
    where training ran; returns that device."""
    device = trainer.strategy.root_device
    model.to(device)
    return device


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
