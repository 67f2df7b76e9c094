"""Training statistics and safety, as a Lightning callback (the way Lightning does monitoring).

    trainer = pl.Trainer(callbacks=[TrainingMonitor()], gradient_clip_val=1.0)
    trainer.fit(model, datamodule)      # train/ppl, train/grad_norm, train/clipped, tokens/s
    monitor.run_stats()                 # clipped_fraction, max_grad_norm, diverged, ...

What it keeps: the token-weighted train perplexity of each epoch, gradient-norm statistics and
clipping counts, throughput, and the divergence guard. None of it changes what the model learns
when training is healthy; it is apart from `LanguageModel` so that the model reads as the chapter.

No device sync per step: a step only appends its loss and gradient norm (tensors) to lists, which
are reduced when read (at logging steps, epoch ends and checkpoints). The guard:
- a loss whose exp() overflows, or a non-finite gradient norm, is divergence: the step is skipped
  (weights and optimizer state untouched), training stops, the best checkpoint so far is kept;
- on a CPU reading a scalar is free, so every step is checked;
- on a GPU a fused optimizer (`fused=True`, the default there) skips a non-finite step itself
  through its `found_inf` input, and the step is reported at the next logging step; any other
  optimizer is checked at every step, one device sync each.

Under DDP (`trainer.world_size` > 1) gradients are averaged before any of this sees them, so the
norms, clipping and the gradient guard agree on every rank; what is per rank is reduced:
- a loss overflow on any rank skips the step on all (one all-reduce of a flag per checked step);
- `train/ppl_epoch` and `train/tokens_per_s_epoch` are over every rank's rows (summed at the
  epoch end and in checkpoints, which hold the sums of all ranks);
- the per-step `train/ppl` is rank 0's rows only (a logged sample, not reduced), and the per-step
  `train/tokens_per_s` is rank 0's rate times the world size (ranks step in lockstep).

Throughput (`train/tokens_per_s`, `train/tokens_per_s_epoch`, summary.json's `tokens_per_s`) is
over the training loop's wall time: from the end of one batch (or the epoch's start) to the end
of the next, so loading the batch and copying it to the device count; validation, checkpoints
and epoch-end callbacks do not.
"""

from __future__ import annotations

import logging
import math
import time

import pytorch_lightning as pl
import torch

from rnnlab.models.clipping import global_grad_norm, max_abs_grad

log = logging.getLogger(__name__)
LOG_FLOAT_MAX = math.log(torch.finfo(torch.float32).max)  # exp() of a larger loss overflows


def exp_or_inf(x: float) -> float:
    return math.exp(x) if x < 709.0 else math.inf  # math.exp raises beyond


def skips_non_finite_steps(optimizer) -> bool:
    """Fused optimizers take `found_inf` (as set by AMP's GradScaler) and skip the update."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class TrainingMonitor(pl.Callback):
    """Epoch and run statistics, throughput and the divergence guard for a `LanguageModel`."""

    def __init__(self):
        self.trainer: pl.Trainer | None = None  # set in setup(); tests may hand in a stand-in
        self.steps_seen, self.clipped_steps, self.max_grad_norm = 0, 0, 0.0
        self.diverged_at: int | None = None
        self.started = False
        self._restored_epoch: int | None = None
        self.start_epoch()

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer

    def start_epoch(self) -> None:
        self._losses: list[tuple[torch.Tensor, int]] = []
        self._norms: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, norm, clip stat)
        self.loss_sum, self.tokens, self.train_time = 0.0, 0, 0.0  # what a resume restored
        self.epoch_clipped, self.epoch_steps = 0, 0
        self._mark = time.perf_counter()  # the loop's clock: the end of the last batch
        self._step = 0
        self._interval_max: torch.Tensor | None = None  # the largest norm since the last log

    # ---- the guard ------------------------------------------------------------------------------
    def diverge(self, why: str, step: int | None = None) -> None:
        trainer = self.trainer
        step = trainer.global_step if step is None else step
        self.diverged_at = step
        last = exp_or_inf(float(self._losses[-1][0])) if self._losses else float("nan")
        log.error("training diverged at step %d (%s); last finite train perplexity %.4g; "
                  "stopping, the best checkpoint so far is kept", step, why, last)
        trainer.should_stop = True

    def _check_now(self, trainer, pl_module) -> bool:
        """Reading a scalar is free on a CPU; on a GPU it syncs, so only on logging steps."""
        return pl_module.device.type == "cpu" or self._logging_step(trainer)

    def _logging_step(self, trainer) -> bool:
        every = trainer.log_every_n_steps
        return bool(every) and (self._step + 1) % every == 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if not self.started:  # benchmarks/bench.py times start-up up to this line
            self.started = True
            log.info("first training step (global step %d)", trainer.global_step)
        self._step = trainer.global_step

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # NaN, or a perplexity that overflows, is divergence: the update is skipped below
        if self.diverged_at is None and self._check_now(trainer, pl_module) \
                and not loss < LOG_FLOAT_MAX:
            self.diverge(f"loss is {loss.item():.4g}, perplexity overflows")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if getattr(trainer, "world_size", 1) > 1 and self._check_now(trainer, pl_module):
            # one rank's overflowed loss skips the step on every rank, or the replicas part ways
            anywhere = trainer.strategy.reduce_boolean_decision(self.diverged_at is not None,
                                                                all=False)
            if anywhere and self.diverged_at is None:
                self.diverge("the loss overflowed on another rank")
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if self.diverged_at is None and grads:
            self._record_grads(trainer, pl_module, optimizer, grads)
        if self.diverged_at is not None:
            for p in pl_module.parameters():  # no gradient: the optimizer leaves p and its state
                p.grad = None
            pl_module.grad_norm = None

    def _record_grads(self, trainer, pl_module, optimizer, grads: list[torch.Tensor]) -> None:
        # before clipping, as the ablation needs; the module's clipping reuses the norm
        norm = pl_module.grad_norm = global_grad_norm(grads)
        value_clip = trainer.gradient_clip_algorithm == "value"
        stat = max_abs_grad(grads) if value_clip else norm  # what clipping compares to theta
        lazy = pl_module.device.type != "cpu" and skips_non_finite_steps(optimizer)
        if not lazy and not norm < math.inf:  # a CPU (free), or an optimizer that can't skip
            self.diverge(f"gradient norm is {norm.item()}")
            return
        self._norms.append((self._step, norm, stat))
        if lazy:  # the optimizer skips a non-finite step itself; we read the norms later
            optimizer.found_inf = (~torch.isfinite(norm)).float()
            optimizer.grad_scale = None
            if self._logging_step(trainer):
                self.fold_norms()  # one sync per log_every_n_steps
                if self.diverged_at is not None:
                    return
        # a running maximum (a tensor op: no sync), so the spikes between logging steps, which
        # clipping is about, reach the logs too
        self._interval_max = norm if self._interval_max is None else \
            torch.maximum(self._interval_max, norm)
        if self._logging_step(trainer):
            pl_module.log("train/grad_norm", norm)
            pl_module.log("train/grad_norm_max", self._interval_max)
            self._interval_max = None

    def fold_norms(self) -> None:
        """Fold the gradient norms recorded since the last call into the epoch and run totals."""
        if not self._norms:
            return
        steps = [step for step, _, _ in self._norms]
        norms = torch.stack([norm for _, norm, _ in self._norms])
        stats = torch.stack([stat for _, _, stat in self._norms])
        self._norms = []
        bad = ~torch.isfinite(norms)
        if bad.any():  # on a GPU, found here rather than at its step (which was skipped)
            first = int(bad.nonzero()[0])
            self.diverge(f"gradient norm is {float(norms[first])}", step=steps[first])
            norms, stats = norms[:first], stats[:first]
            if not len(norms):
                return
        theta = self.trainer.gradient_clip_val
        clipped = int((stats > theta).sum()) if theta else 0
        self.epoch_clipped += clipped
        self.epoch_steps += len(norms)
        self.clipped_steps += clipped
        self.steps_seen += len(norms)
        self.max_grad_norm = max(self.max_grad_norm, float(norms.max()))

    # ---- statistics ---------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now  # this batch's loading, copy and step
        self.train_time += seconds
        if self.diverged_at is not None or not outputs:
            return
        loss, n = outputs["loss"], batch[1].numel()
        self._losses.append((loss, n))
        if self._logging_step(trainer):
            pl_module.log("train/ppl", torch.exp(loss), prog_bar=True)
            pl_module.log("train/tokens_per_s", n * getattr(trainer, "world_size", 1)
                          / max(seconds, 1e-9))

    def on_validation_end(self, trainer, pl_module) -> None:
        self._mark = time.perf_counter()  # a validation inside the epoch is not training time

    def epoch_loss(self) -> tuple[float, int]:
        """This epoch's summed token loss (float64) and token count so far."""
        if not self._losses:
            return self.loss_sum, self.tokens
        losses = torch.stack([loss for loss, _ in self._losses]).double()
        counts = torch.tensor([n for _, n in self._losses], dtype=torch.float64,
                              device=losses.device)
        return self.loss_sum + float(losses @ counts), self.tokens + int(counts.sum())

    def epoch_stats(self) -> dict[str, float]:
        """This epoch so far: token-weighted train perplexity and training tokens/s (over the
        training loop's wall time, data loading included, validation excluded), and the
        fraction of steps clipped."""
        loss_sum, tokens = self.across_ranks(*self.epoch_loss())
        if not tokens:
            return {}
        self.fold_norms()
        stats = {"train/ppl_epoch": exp_or_inf(loss_sum / tokens),
                 "train/tokens_per_s_epoch": tokens / max(self.train_time, 1e-9)}
        if self.trainer.gradient_clip_val and self.epoch_steps:
            stats["train/clipped"] = self.epoch_clipped / self.epoch_steps
        return stats

    def across_ranks(self, loss_sum: float, tokens: int) -> tuple[float, int]:
        """Under DDP, the sums over every rank's rows (one all-reduce); otherwise as given."""
        trainer = self.trainer
        if getattr(trainer, "world_size", 1) == 1:
            return loss_sum, tokens
        sums = torch.tensor([loss_sum, float(tokens)], dtype=torch.float64,
                            device=trainer.strategy.root_device)
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
        return float(sums[0]), int(sums[1])

    def run_stats(self) -> dict:
        """Totals over the whole run for summary.json (one sync, at the end)."""
        self.fold_norms()
        return {"clipped_fraction": self.clipped_steps / max(self.steps_seen, 1),
                "max_grad_norm": self.max_grad_norm,
                "diverged": self.diverged_at is not None, "diverged_at_step": self.diverged_at}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        restored, self._restored_epoch = self._restored_epoch, None
        if restored == trainer.current_epoch:
            # resumed mid-epoch: go on from the epoch's totals the checkpoint restored
            self._mark = time.perf_counter()
            return
        self.start_epoch()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        stats = self.epoch_stats()
        for key, value in stats.items():  # equal on every rank: sync_dist's mean keeps them
            pl_module.log(key, value, sync_dist=True)
        val = trainer.callback_metrics.get("val/ppl")  # one plain line, readable without a tty
        log.info("epoch %d/%d  train/ppl %.3f  val/ppl %.3f  tokens/s %.0f",
                 trainer.current_epoch + 1, trainer.max_epochs or -1,
                 stats.get("train/ppl_epoch", float("nan")),
                 float("nan") if val is None else float(val),
                 stats.get("train/tokens_per_s_epoch", float("nan")))

    # ---- checkpoints: what an interrupted epoch needs to go on exactly --------------------------
    def state_dict(self) -> dict:
        self.fold_norms()
        loss_sum, tokens = self.across_ranks(*self.epoch_loss())  # every rank calls this
        return {"steps_seen": self.steps_seen, "clipped_steps": self.clipped_steps,
                "max_grad_norm": self.max_grad_norm, "loss_sum": loss_sum, "tokens": tokens,
                "clipped": self.epoch_clipped, "steps": self.epoch_steps,
                "train_time": self.train_time,
                "epoch": self.trainer.current_epoch if self.trainer is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps_seen = state.get("steps_seen", 0)
        self.clipped_steps = int(state.get("clipped_steps", 0))
        self.max_grad_norm = float(state.get("max_grad_norm", 0.0))
        self.loss_sum, self.tokens = float(state.get("loss_sum", 0.0)), state.get("tokens", 0)
        if getattr(self.trainer, "global_rank", 0) > 0:  # the sums are all ranks': counted once
            self.loss_sum, self.tokens = 0.0, 0
        self.epoch_clipped, self.epoch_steps = state.get("clipped", 0), state.get("steps", 0)
        self.train_time = state.get("train_time", 0.0)
        self._losses, self._norms = [], []
        self._restored_epoch = state.get("epoch")  # the epoch these totals belong to
