"""The run's kernel and precision choices: made once, then part of the run.

    from rnnlab.training.choices import RunChoices
    choices = RunChoices.recorded_for(cfg, out_dir, relaunched)  # {} for a new run
    precision = choices.resolve_precision(cfg.trainer)  # `auto` resolved once, then kept
    threads = choices.threads(cfg, default)              # the recorded count on a resume
    choices.apply()                                      # kernels.keep(the recorded kernels)
    callbacks.append(KeepChoices(choices, out_dir, rank0))  # checkpoint, choices.json, DDP
    choices.record()   # {"precision", "torch_threads", "kernels", "machine"}

Kernel choices are timed (rnnlab.kernels.choice) and `trainer.precision: auto` depends on the
CPU, so a resumed run, a relaunched sweep job or a job requeued onto another machine could go on
with other choices than it started with, and train another model. The choices are therefore
recorded with the run: in every checkpoint (`checkpoint["rnnlab_choices"]`), in the run dir's
choices.json and in summary.json; a resume reads them from its checkpoint (a relaunched job
that starts over, from choices.json) and uses them instead of deciding again. A recorded bf16
precision on a CPU that cannot run it is refused in one line; an explicit `trainer.precision`
that differs from the recorded one is used, with a warning naming the change. Under DDP every
rank uses rank 0's kernel choices.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from rnnlab.config import checks
from rnnlab.errors import ConfigError
from rnnlab.kernels import choice as kernels
from rnnlab.kernels.cache import cpu_model

log = logging.getLogger(__name__)

KEY = "rnnlab_choices"  # the checkpoint's entry
FILE = "choices.json"   # the run dir's


def read_checkpoint_choices(ckpt_path: str | Path) -> dict:
    """The choices a checkpoint recorded ({} for one written before they were)."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError):
        return {}  # the resume's own checks say what is wrong with the file
    found = ckpt.get(KEY) if isinstance(ckpt, dict) else None
    return found if isinstance(found, dict) else {}


def read_run_choices(out_dir: Path) -> dict:
    try:
        found = json.loads((out_dir / FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


class RunChoices:
    """What a run decided (or recorded before), and what it decides now."""

    def __init__(self, recorded: dict | None = None, source: str | None = None):
        self.recorded, self.source = dict(recorded or {}), source
        self.precision: str | int | None = None
        self.torch_threads: int | None = None

    @classmethod
    def recorded_for(cls, cfg: DictConfig, out_dir: Path, relaunched: bool) -> RunChoices:
        """A resume's choices from its checkpoint; a relaunched job's that starts over from its
        job dir's choices.json; none for a new run."""
        if cfg.get("ckpt_path"):
            found = read_checkpoint_choices(cfg.ckpt_path)
            if found:
                return cls(found, f"checkpoint {cfg.ckpt_path}")
        if relaunched and (found := read_run_choices(out_dir)):
            return cls(found, str(out_dir / FILE))
        return cls()

    def resolve_precision(self, trainer: DictConfig) -> str | int:
        """`trainer.precision` as this run uses it: the recorded one where the config says auto
        (or the same), else the config's (a warning names the change); `auto` resolved here
        for a new run."""
        asked = trainer.get("precision", "32-true")
        accelerator = trainer.get("accelerator", "auto")
        recorded = self.recorded.get("precision")
        if recorded is None:
            self.precision = kernels.resolve_precision(asked, accelerator)
        elif asked != "auto" and str(asked) != str(recorded):
            self.precision = kernels.resolve_precision(asked, accelerator)
            log.warning("trainer.precision=%s: this run was recorded in %s (%s); it goes on in "
                        "%s, so its numbers will differ from a run without the change", asked,
                        recorded, self.source, self.precision)
        else:
            on_cpu = accelerator == "cpu" or (accelerator == "auto"
                                              and not torch.cuda.is_available())
            problem = checks.bf16_problem() if on_cpu and "bf16" in str(recorded) else None
            if problem:
                raise ConfigError(
                    f"this run was recorded in trainer.precision={recorded} (on "
                    f"{self.recorded.get('machine', 'another machine')}) and {problem}; resume "
                    f"with trainer.precision=32-true to go on in float32 (its numbers will "
                    f"then differ from the straight run)")
            self.precision = recorded
        return self.precision

    def threads(self, cfg: DictConfig, default: int) -> int:
        """The recorded thread count on a resume, unless `torch_threads` says otherwise."""
        recorded = self.recorded.get("torch_threads")
        if cfg.get("torch_threads") or not isinstance(recorded, int) or recorded == default:
            self.torch_threads = default
        else:
            log.info("torch_threads: %d as recorded by %s (this launch would use %d)", recorded,
                     self.source, default)
            self.torch_threads = recorded
        return self.torch_threads

    def apply(self) -> None:
        """Make the recorded kernel choices the ones used (after kernels.configure)."""
        if self.recorded.get("kernels"):
            kernels.keep(self.recorded["kernels"])
            log.info("kernel choices: %d recorded by %s", len(self.recorded["kernels"]),
                     self.source)

    def record(self) -> dict:
        """The choices as they stand: the recorded ones not used again in this part of the run
        kept, the ones made or used since added."""
        made = kernels.made()
        bases = {kernels.base_label(label) for label in made}
        earlier = {label: value for label, value in (self.recorded.get("kernels") or {}).items()
                   if kernels.base_label(label) not in bases}
        return {"precision": self.precision, "torch_threads": self.torch_threads,
                "kernels": {**earlier, **made}, "machine": cpu_model(), "from": self.source}

    def write(self, out_dir: Path) -> None:
        path = out_dir / FILE
        tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.record(), indent=2, default=str))
        os.replace(tmp, path)


class KeepChoices(pl.Callback):
    """Record the choices in each checkpoint and the run dir; under DDP, rank 0's for all."""

    def __init__(self, choices: RunChoices, out_dir: Path, rank0: bool):
        self.choices, self.out_dir, self.rank0 = choices, out_dir, rank0
        self._shared = False

    def _share(self, trainer: pl.Trainer, table: dict[str, str]) -> None:
        if getattr(trainer, "world_size", 1) > 1:
            table = trainer.strategy.broadcast(table, src=0)
            if trainer.global_rank != 0:
                kernels.keep(table)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the decisions rank 0 knows before the first step (its machine's cache, the record)
        threads = torch.get_num_threads()
        suffix = f" {threads} thread{'s' * (threads > 1)}"
        known = {k: v for k, v in kernels.machine_choices().items() if k.endswith(suffix)}
        self._share(trainer, {**known, **self.choices.record()["kernels"]})

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if not self._shared:  # and those rank 0 made in its first step
            self._shared = True
            self._share(trainer, kernels.made())

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict) -> None:
        checkpoint[KEY] = self.choices.record()
        if self.rank0:
            self.choices.write(self.out_dir)
