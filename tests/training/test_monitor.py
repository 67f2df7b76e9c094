"""TrainingMonitor without a Trainer: epoch statistics, clipping counts, the divergence guard."""

import math
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from rnnlab.models.cores import ScratchRNN, TorchRNN
from rnnlab.models.lm import LanguageModel
from rnnlab.training.monitor import TrainingMonitor

V = 5
SGD_MOMENTUM = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
ADAMW = partial(torch.optim.AdamW, lr=0.1, weight_decay=0.1)


def stand_in_trainer(**kw) -> SimpleNamespace:
    base = dict(log_every_n_steps=0, gradient_clip_val=1.0, gradient_clip_algorithm=None,
                global_step=0, should_stop=False, callback_metrics={}, current_epoch=0,
                max_epochs=1)
    return SimpleNamespace(**{**base, **kw})


def setup(optimizer=SGD_MOMENTUM, core=None, **trainer_kw):
    torch.manual_seed(0)
    model = LanguageModel(core=core or partial(TorchRNN, "gru", num_hiddens=4), vocab_size=V,
                          optimizer=optimizer)
    model.log = lambda *a, **k: None
    trainer = stand_in_trainer(**trainer_kw)
    monitor = TrainingMonitor()
    monitor.setup(trainer, model, "fit")
    return model, trainer, monitor, model.configure_optimizers()


def step(model, trainer, monitor, optimizer, grad_value: float) -> None:
    """One optimizer step as Lightning runs it: monitor, clipping, the optimizer."""
    monitor.on_train_batch_start(trainer, model, None, 0)
    for p in model.parameters():
        p.grad = torch.full_like(p, grad_value)
    monitor.on_before_optimizer_step(trainer, model, optimizer)
    model.configure_gradient_clipping(optimizer, trainer.gradient_clip_val,
                                      trainer.gradient_clip_algorithm)
    optimizer.step()
    trainer.global_step += 1


def snapshot(model, optimizer) -> list[torch.Tensor]:
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return [t.detach().clone() for t in [*model.parameters(), *state]]


def test_train_perplexity_is_token_weighted_over_the_epoch():
    model, trainer, monitor, _ = setup()
    batches = [(1.0, 4 * 8), (2.0, 4 * 3)]  # windows of unequal length (randomized truncation)
    for loss, n in batches:
        monitor.on_train_batch_start(trainer, model, None, 0)
        Y = torch.zeros(n, dtype=torch.long)
        monitor.on_train_batch_end(trainer, model, {"loss": torch.tensor(loss)}, (Y, Y), 0)
    stats = monitor.epoch_stats()
    assert stats["train/ppl_epoch"] == pytest.approx(math.exp((1.0 * 32 + 2.0 * 12) / 44))
    assert stats["train/ppl_epoch"] != pytest.approx(math.exp(1.5))  # not a mean of batches


def test_clipping_counts_and_the_largest_norm():
    model, trainer, monitor, opt = setup()
    n = sum(p.numel() for p in model.parameters())
    for norm in (0.5, 2.0, 3.0):
        step(model, trainer, monitor, opt, norm / math.sqrt(n))
    stats = monitor.run_stats()
    assert stats["clipped_fraction"] == pytest.approx(2 / 3)
    assert stats["max_grad_norm"] == pytest.approx(3.0, rel=1e-5)
    assert monitor.epoch_stats() == {}  # no losses recorded: no perplexity to report


def test_value_clipping_clamps_each_gradient_and_counts_by_the_largest_entry():
    model, trainer, monitor, opt = setup(core=partial(ScratchRNN, num_hiddens=4),
                                         gradient_clip_val=0.1, gradient_clip_algorithm="value")
    monitor.on_train_batch_start(trainer, model, None, 0)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.01)
    next(model.parameters()).grad[0, 0] = 5.0  # one large entry, a small global norm otherwise
    monitor.on_before_optimizer_step(trainer, model, opt)
    model.configure_gradient_clipping(opt, 0.1, "value")
    assert max(float(p.grad.abs().max()) for p in model.parameters()) == pytest.approx(0.1)
    assert min(float(p.grad.abs().min()) for p in model.parameters()) == pytest.approx(0.01)
    assert monitor.run_stats()["clipped_fraction"] == 1.0


@pytest.mark.parametrize("optimizer", [SGD_MOMENTUM, ADAMW])
def test_a_non_finite_step_on_a_cpu_leaves_weights_and_optimizer_state_untouched(optimizer):
    model, trainer, monitor, opt = setup(optimizer)
    step(model, trainer, monitor, opt, 0.01)  # momentum, Adam's moments and step count exist now
    before = snapshot(model, opt)
    step(model, trainer, monitor, opt, float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, opt)))
    assert monitor.diverged_at == 1 and trainer.should_stop
    assert monitor.run_stats()["diverged"] and monitor.steps_seen == 1


@pytest.mark.parametrize("optimizer", [SGD_MOMENTUM, ADAMW])
def test_on_a_gpu_a_fused_optimizer_skips_the_bad_step_without_a_sync(monkeypatch, optimizer):
    """The device path, driven with CPU tensors: fused optimizers run on a CPU too."""
    model, trainer, monitor, _ = setup(log_every_n_steps=4)
    opt = optimizer(model.parameters(), fused=True)
    monkeypatch.setattr(LanguageModel, "device", property(lambda self: torch.device("cuda")))
    step(model, trainer, monitor, opt, 0.01)
    step(model, trainer, monitor, opt, 2.0)
    before = snapshot(model, opt)
    step(model, trainer, monitor, opt, float("nan"))  # step 2: skipped by the optimizer itself
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, opt)))
    assert monitor.diverged_at is None  # not read yet: no sync until the logging step
    step(model, trainer, monitor, opt, 0.01)  # step 3 is a logging step: the norms are read
    assert monitor.diverged_at == 2 and trainer.should_stop
    assert monitor.steps_seen == 2 and monitor.clipped_steps == 1  # norms before the bad step


def test_on_a_gpu_an_optimizer_that_cannot_skip_is_checked_at_every_step(monkeypatch):
    model, trainer, monitor, opt = setup(log_every_n_steps=100)
    monkeypatch.setattr(LanguageModel, "device", property(lambda self: torch.device("cuda")))
    step(model, trainer, monitor, opt, 0.01)
    before = snapshot(model, opt)
    step(model, trainer, monitor, opt, float("inf"))
    assert monitor.diverged_at == 1
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, opt)))


def test_an_overflowing_loss_is_divergence_and_its_step_is_skipped():
    model, trainer, monitor, opt = setup()
    before = snapshot(model, opt)
    monitor.on_train_batch_start(trainer, model, None, 0)
    monitor.on_before_backward(trainer, model, torch.tensor(100.0))  # exp(100) > float32 max
    assert monitor.diverged_at == 0 and trainer.should_stop
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # backward ran; the guard must still stop the update
    monitor.on_before_optimizer_step(trainer, model, opt)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(model, opt)))


def test_checkpointed_statistics_resume_the_epoch():
    model, trainer, monitor, opt = setup()
    monitor.on_train_batch_start(trainer, model, None, 0)
    Y = torch.zeros(10, dtype=torch.long)
    monitor.on_train_batch_end(trainer, model, {"loss": torch.tensor(1.5)}, (Y, Y), 0)
    step(model, trainer, monitor, opt, 1.0)
    resumed = TrainingMonitor()
    resumed.setup(trainer, model, "fit")
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.epoch_stats()["train/ppl_epoch"] == monitor.epoch_stats()["train/ppl_epoch"]
    assert resumed.run_stats() == monitor.run_stats()


def test_the_largest_norm_between_logging_steps_is_logged():
    model, trainer, monitor, opt = setup(log_every_n_steps=3, gradient_clip_val=None)
    logged = []
    model.log = lambda key, value, **k: logged.append((key, float(value)))
    n = sum(p.numel() for p in model.parameters())
    for norm in (1.0, 5.0, 2.0, 0.5, 0.25, 0.75):
        step(model, trainer, monitor, opt, norm / math.sqrt(n))
    got = [(k, round(v, 4)) for k, v in logged if k.startswith("train/grad_norm")]
    assert got == [("train/grad_norm", 2.0), ("train/grad_norm_max", 5.0),
                   ("train/grad_norm", 0.75), ("train/grad_norm_max", 0.75)]


@pytest.mark.slow  # a training run
def test_tokens_per_s_is_over_the_loops_wall_time_data_loading_included(cfg_factory,
                                                                         monkeypatch):
    import json
    import time
    from pathlib import Path

    from rnnlab.text.datamodule import WindowDataset
    from rnnlab.training.run import train

    pause = 0.02  # each batch's loading; a tiny model's step takes far less
    fetch = WindowDataset.__getitem__
    monkeypatch.setattr(WindowDataset, "__getitem__",
                        lambda self, w: time.sleep(pause) or fetch(self, w))
    cfg = cfg_factory("test=false", "~callbacks.gradients",
                      "callbacks.sample_text.every_n_epochs=0")
    train(cfg)
    s = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    tokens_per_batch = cfg.data.batch_size * cfg.data.num_steps
    assert 0 < s["tokens_per_s"] <= tokens_per_batch / pause
