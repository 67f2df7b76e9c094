"""Cosine learning-rate schedules: over a number of steps (the presets'), or over the wall clock.

    scheduler: {_target_: rnnlab.models.schedule.CosineSteps, _partial_: true, total_steps: 3000}
    scheduler: {_target_: rnnlab.models.schedule.WallClockCosine, _partial_: true, budget_s: 540}

`CosineSteps` is reproducible: the same steps get the same learning rates on any machine.
`WallClockCosine` goes from 1 to `min_factor` over `budget_s` seconds of training, whatever the
machine's speed, so a time budget gets a full decay; but how many steps that is depends on how
fast and how busy the machine is, so two machines (or two runs) train different models. Use it
only when a time budget matters more than reproducing a number.
"""

from __future__ import annotations

import math
import time

import torch


class WallClockCosine(torch.optim.lr_scheduler.LambdaLR):
    def __init__(self, optimizer: torch.optim.Optimizer, budget_s: float, warmup_s: float = 0.0,
                 min_factor: float = 0.0):
        if budget_s <= 0:
            raise ValueError(f"scheduler budget_s={budget_s} must be > 0 seconds")
        self.budget_s, self.warmup_s, self.min_factor = budget_s, warmup_s, min_factor
        self.t0 = time.monotonic()
        super().__init__(optimizer, self.factor)

    def factor(self, _step: int) -> float:
        elapsed = time.monotonic() - self.t0
        if elapsed < self.warmup_s:
            return max(elapsed / self.warmup_s, 1e-3)
        progress = min(1.0, (elapsed - self.warmup_s) / max(self.budget_s - self.warmup_s, 1e-9))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["elapsed"] = time.monotonic() - self.t0  # a resumed run goes on from here
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        elapsed = state_dict.pop("elapsed", 0.0)
        super().load_state_dict(state_dict)
        self.t0 = time.monotonic() - elapsed


class CosineSteps(torch.optim.lr_scheduler.LambdaLR):
    """A linear warm-up over `warmup_steps`, then a half cosine from 1 to `min_factor` at
    `total_steps` (held there after). Counted in optimizer steps, so the schedule is the same on
    every machine and across a resume. `LanguageModel` fills in a `total_steps` left null with the
    trainer's budget (`trainer.max_epochs` x steps per epoch, or `trainer.max_steps`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 min_factor: float = 0.0):
        if not isinstance(total_steps, int) or total_steps <= warmup_steps:
            raise ValueError(f"scheduler total_steps={total_steps} must be an integer larger than "
                             f"warmup_steps={warmup_steps}; set trainer.max_steps")
        self.total_steps, self.warmup_steps, self.min_factor = total_steps, warmup_steps, min_factor
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
