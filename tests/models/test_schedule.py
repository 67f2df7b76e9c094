"""Learning-rate schedules: in steps (the presets'), and the explicit wall-clock one."""

import math

import pytest
import torch

from rnnlab.models.schedule import CosineSteps, WallClockCosine


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_cosine_steps_warms_up_then_decays_to_the_floor_at_the_last_step():
    s = CosineSteps(optimizer(), total_steps=110, warmup_steps=10, min_factor=0.1)
    assert s.factor(0) == pytest.approx(0.1) and s.factor(9) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert s.factor(110) == pytest.approx(0.1) and s.factor(500) == pytest.approx(0.1)


def test_bad_budgets_are_refused_and_the_wall_clock_schedule_stays_available():
    with pytest.raises(ValueError, match="total_steps=5 must be an integer larger than"):
        CosineSteps(optimizer(), total_steps=5, warmup_steps=10)
    assert WallClockCosine(optimizer(), budget_s=60).factor(0) == pytest.approx(1.0, abs=1e-3)
