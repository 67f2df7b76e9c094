"""A learning-rate schedule that follows the wall clock, so a time budget gets a full decay.

    scheduler: {_target_: rnnlab.schedule.WallClockCosine, _partial_: true, budget_s: 540}

The factor goes from 1 to `min_factor` along a half cosine over `budget_s` seconds of training
(after an optional linear warm-up), whatever the machine's speed; with `trainer.max_time` set to
the same budget the run ends as the learning rate bottoms out.
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
