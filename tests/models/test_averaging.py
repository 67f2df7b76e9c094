"""Weight averaging: what is validated and checkpointed is the average; training goes on from the
optimizer's own weights, also after a resume."""

import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_cfg
from torch import nn

from rnnlab.errors import ConfigError
from rnnlab.models.averaging import WeightAverage
from rnnlab.training.run import train

AVERAGING = ["+callbacks.averaging._target_=rnnlab.models.averaging.WeightAverage"]


def set_weights(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def weights(module: nn.Module) -> list[float]:
    return sorted({p.detach().flatten()[0].item() for p in module.parameters()})


def test_the_average_is_swapped_in_for_validation_and_out_for_training():
    avg, module = WeightAverage(decay=0.5), nn.Linear(2, 2)
    trainer = SimpleNamespace(global_step=0)
    for step, value in enumerate([1.0, 3.0, 7.0], start=1):  # three optimizer steps
        set_weights(module, value)
        trainer.global_step = step
        avg.on_train_batch_end(trainer, module, None, None, 0)
        avg.on_train_batch_end(trainer, module, None, None, 1)  # no step between: no update
    # 1, then 0.5 * 1 + 0.5 * 3 = 2, then 0.5 * 2 + 0.5 * 7 = 4.5
    avg.on_validation_start(trainer, module)
    assert weights(module) == [4.5]
    avg.on_validation_start(trainer, module)  # twice (a sanity check, then val): still swapped
    saved = avg.state_dict()
    avg.on_train_batch_start(trainer, module, None, 0)
    assert weights(module) == [7.0]
    # a checkpoint taken while the average was in the model resumes from the trained weights
    resumed = WeightAverage(decay=0.5)
    resumed.load_state_dict(saved)
    set_weights(module, 4.5)  # what the checkpoint's model holds
    resumed.on_train_start(trainer, module)
    assert weights(module) == [7.0]


def test_no_average_before_the_first_step_leaves_validation_alone():
    avg, module = WeightAverage(), nn.Linear(2, 2)
    set_weights(module, 2.0)
    avg.on_validation_start(SimpleNamespace(global_step=0), module)
    assert weights(module) == [2.0]


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ConfigError, match=rf"callbacks.averaging.decay={decay}.*\[0, 1\)"):
        WeightAverage(decay=decay)


def summary(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())


@pytest.mark.slow
def test_decay_0_is_training_without_it_and_a_decay_changes_what_is_validated(tmp_path,
                                                                              corpus_file):
    common = ["trainer.max_epochs=2", "test=false", "callbacks.sample_text.every_n_epochs=0"]
    plain = train(make_cfg(tmp_path / "a", corpus_file, common))
    zero = train(make_cfg(tmp_path / "b", corpus_file,
                          [*common, *AVERAGING, "+callbacks.averaging.decay=0.0"]))
    averaged_cfg = make_cfg(tmp_path / "c", corpus_file,
                            [*common, *AVERAGING, "+callbacks.averaging.decay=0.9"])
    averaged = train(averaged_cfg)
    assert zero == pytest.approx(plain, rel=1e-6)
    assert averaged != pytest.approx(plain, rel=1e-4)
    # the best checkpoint holds the weights val/ppl was measured with, and says how they came
    ckpt = torch.load(summary(averaged_cfg)["checkpoints"]["best"], weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if "WeightAverage" in k)
    assert state["decay"] == 0.9 and state["trained"] is not None
    model_weights = [v for k, v in ckpt["state_dict"].items()]
    assert any(not torch.equal(a, t) for a, t in zip(state["average"], state["trained"]))
    assert all(torch.equal(a, m) for a, m in zip(state["average"], model_weights))


@pytest.mark.slow
def test_an_averaged_run_resumed_after_an_interruption_gives_the_same_numbers(tmp_path,
                                                                              corpus_file):
    common = ["trainer.max_epochs=3", "test=false", "model.embedding_dim=8",
              "callbacks.sample_text.every_n_epochs=0", *AVERAGING,
              "+callbacks.averaging.decay=0.9"]
    expected = train(make_cfg(tmp_path / "a", corpus_file, common))
    cut = make_cfg(tmp_path / "b", corpus_file,
                   [*common, "+callbacks.stop._target_=conftest.SignalAtStep",
                    "+callbacks.stop.step=160"])  # in the last epoch, after two validations
    with pytest.raises(SystemExit) as info:
        train(cut)
    assert info.value.code == 128 + signal.SIGINT
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    resumed = make_cfg(tmp_path / "c", corpus_file, [*common, f"ckpt_path={last}"])
    assert train(resumed) == pytest.approx(expected, rel=1e-6)
    resumed_summary = json.loads((tmp_path / "b" / "run" / "summary.json").read_text())
    straight_summary = json.loads((tmp_path / "a" / "run" / "summary.json").read_text())
    assert resumed_summary["final_val_ppl"] == pytest.approx(straight_summary["final_val_ppl"],
                                                             rel=1e-6)
    # and from the end of an epoch, where the last checkpoint holds the average in the model
    two = make_cfg(tmp_path / "d", corpus_file, [*common, "trainer.max_epochs=2"])
    train(two)
    last = tmp_path / "d" / "run" / "checkpoints" / "last.ckpt"
    on = make_cfg(tmp_path / "e", corpus_file, [*common, f"ckpt_path={last}"])
    assert train(on) == pytest.approx(expected, rel=1e-6)
