"""Kernel and precision choices made once: the machine's cache, the run's record, its reuse."""

import json
import logging
import multiprocessing
import time
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from rnnlab.config import checks
from rnnlab.errors import ConfigError
from rnnlab.kernels import choice as kernels
from rnnlab.kernels.cache import ISA_LIMITS, MachineCache, machine_key
from rnnlab.training.choices import KEY, RunChoices
from rnnlab.training.run import train


def label(shape: str) -> str:
    threads = torch.get_num_threads()
    return f"tanh {shape} float32 {threads} thread{'s' * (threads > 1)}"


@pytest.fixture(autouse=True)
def fresh_kernels():
    kernels.configure()
    yield
    kernels.configure()


def test_the_machine_cache_times_once_and_names_the_machine(tmp_path):
    calls = []
    first = MachineCache(tmp_path)
    assert first.decide("tanh 3x7 float32 1 thread", lambda: calls.append(1) or "sigmoid") \
        == "sigmoid"
    again = MachineCache(tmp_path)  # a later run on this machine
    assert again.decide("tanh 3x7 float32 1 thread", lambda: calls.append(1) or "tanh") \
        == "sigmoid"
    assert len(calls) == 1 and again.path == first.path
    stored = json.loads(first.path.read_text())
    assert stored["machine"] == machine_key() and "torch " + torch.__version__ in stored["machine"]
    retimed = MachineCache(tmp_path, retime=True)  # kernels.retime=true: timed again, once
    assert retimed.decide("tanh 3x7 float32 1 thread", lambda: calls.append(1) or "tanh") == "tanh"
    assert retimed.decide("tanh 3x7 float32 1 thread", lambda: calls.append(1) or "x") == "tanh"
    assert len(calls) == 2 and MachineCache(tmp_path).read() == {"tanh 3x7 float32 1 thread":
                                                                  "tanh"}


def test_a_cap_on_the_instruction_sets_is_another_machine(tmp_path, monkeypatch):
    for name in ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    plain = MachineCache(tmp_path)
    plain.decide("tanh 3x7 float32 1 thread", lambda: "tanh")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")  # MKL runs its AVX2 kernels
    capped = MachineCache(tmp_path)
    assert capped.path != plain.path and "MKL_ENABLE_INSTRUCTIONS=AVX2" in machine_key()
    assert capped.decide("tanh 3x7 float32 1 thread", lambda: "sigmoid") == "sigmoid"
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    assert MachineCache(tmp_path).read() == {"tanh 3x7 float32 1 thread": "tanh"}  # kept apart


def _decide_slowly(folder: str, log: str, answer: str) -> None:
    def time_it():
        with open(log, "a") as f:
            f.write(answer + "\n")
        time.sleep(0.5)  # long enough for the other process to reach the lock
        return answer

    MachineCache(folder).decide("matmul 32x64x64 float32 1 thread", time_it)


def test_parallel_jobs_with_one_shape_share_one_decision(tmp_path):
    log = tmp_path / "timed.txt"
    ctx = multiprocessing.get_context("fork")
    jobs = [ctx.Process(target=_decide_slowly, args=(str(tmp_path), str(log), answer))
            for answer in ("torch", "onednn")]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(30)
    assert [job.exitcode for job in jobs] == [0, 0]
    timed = log.read_text().split()
    assert len(timed) == 1  # the second waited on the lock and read the first's decision
    assert MachineCache(tmp_path).read() == {"matmul 32x64x64 float32 1 thread": timed[0]}


@pytest.mark.parametrize("stored", ["tanh", "sigmoid"])
def test_a_cached_decision_is_used_instead_of_a_timing(tmp_path, stored):
    # one of the two contradicts what timing would pick on this machine
    MachineCache(tmp_path)._write({label("3x7"): stored})
    kernels.configure(cache_dir=str(tmp_path))
    assert kernels.tanh_via_sigmoid(torch.randn(3, 7)) == (stored == "sigmoid")
    assert kernels.made() == {label("3x7"): stored}
    kernels.tanh_via_sigmoid(torch.randn(5, 7))  # a new shape: timed once, then stored
    assert set(MachineCache(tmp_path).read()) == {label("3x7"), label("5x7")}


def test_recorded_choices_win_over_the_cache_whatever_the_threads(tmp_path):
    MachineCache(tmp_path)._write({label("3x7"): "tanh"})
    kernels.configure(cache_dir=str(tmp_path))
    kernels.keep({"tanh 3x7 float32 7 threads": "sigmoid"})  # recorded with other threads
    assert kernels.tanh_via_sigmoid(torch.randn(3, 7))
    with kernels.forced(tanh="tanh"):  # a setting the user forces still wins
        assert not kernels.tanh_via_sigmoid(torch.randn(3, 7))
    assert kernels.tanh_via_sigmoid(torch.randn(3, 7))  # forced() kept the record
    with pytest.raises(ValueError, match="'fast' is not one of"):
        kernels.keep({"tanh 3x7 float32 1 thread": "fast"})


def test_recorded_precision_is_kept_or_refused_in_one_line(monkeypatch, caplog):
    trainer = {"precision": "auto", "accelerator": "cpu"}
    recorded = RunChoices({"precision": "bf16-mixed", "machine": "Xeon"}, "checkpoint x")
    monkeypatch.setattr(checks, "bf16_problem", lambda: None)
    assert recorded.resolve_precision(trainer) == "bf16-mixed"
    monkeypatch.setattr(kernels, "bf16_matrix_units", lambda: False)  # auto would say 32-true
    assert recorded.resolve_precision(trainer) == "bf16-mixed"
    monkeypatch.setattr(checks, "bf16_problem", lambda: "this CPU has no bf16 support")
    with pytest.raises(ConfigError) as info:
        recorded.resolve_precision(trainer)
    assert "\n" not in str(info.value) and "trainer.precision=bf16-mixed (on Xeon)" in \
        str(info.value) and "trainer.precision=32-true" in str(info.value)
    with caplog.at_level(logging.WARNING):  # the user's explicit fallback: used, and said
        assert recorded.resolve_precision({**trainer, "precision": "32-true"}) == "32-true"
    assert "recorded in bf16-mixed" in caplog.text and "goes on in 32-true" in caplog.text


@pytest.mark.slow  # a training run
def test_a_resume_uses_the_choices_its_checkpoint_recorded(tmp_path, corpus_file):
    cache = tmp_path / "kernels"
    common = ["trainer.max_epochs=2", "test=false", "~callbacks.gradients",
              f"kernels.cache_dir={cache}", "callbacks.sample_text.every_n_epochs=0"]
    first = make_cfg(tmp_path / "a", corpus_file, [*common, "trainer.max_epochs=1"])
    train(first)
    run_dir = Path(first.paths.output_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    made = json.loads((run_dir / "summary.json").read_text())["kernels"]
    # the checkpoint holds those made until it was saved; choices.json all, at the end
    assert ckpt[KEY]["kernels"].items() <= made.items() and ckpt[KEY]["precision"] == \
        json.loads((run_dir / "choices.json").read_text())["precision"]
    assert json.loads((run_dir / "choices.json").read_text())["kernels"] == made
    made = dict(ckpt[KEY]["kernels"])
    tanh_labels = [k for k in made if k.startswith("tanh ") and "float32" in k]
    assert tanh_labels
    # what the checkpoint recorded differs from what this machine's cache now says
    flipped = {k: ("tanh" if v == "sigmoid" else "sigmoid") for k, v in made.items()
               if k in tanh_labels}
    ckpt[KEY]["kernels"].update(flipped)
    torch.save(ckpt, last)
    resumed = make_cfg(tmp_path / "b", corpus_file, [*common, f"ckpt_path={last}"])
    train(resumed)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "finished" and s["choices_from"] == f"checkpoint {last}"
    assert {k: s["kernels"][k] for k in flipped} == flipped
    assert MachineCache(cache).read()[tanh_labels[0]] == made[tanh_labels[0]]  # untouched


def test_under_ddp_the_other_ranks_use_rank_0s_choices(tmp_path):
    from types import SimpleNamespace

    from rnnlab.training.choices import KeepChoices

    rank0_made = {label("3x7"): "sigmoid"}  # what rank 0 decided; this rank's cache says tanh
    MachineCache(tmp_path)._write({label("3x7"): "tanh"})
    kernels.configure(cache_dir=str(tmp_path))
    sent = []
    strategy = SimpleNamespace(broadcast=lambda obj, src: sent.append(obj) or rank0_made)
    rank1 = SimpleNamespace(world_size=2, global_rank=1, strategy=strategy)
    keeper = KeepChoices(RunChoices(), tmp_path, rank0=False)
    keeper.on_train_start(rank1, None)
    assert kernels.tanh_via_sigmoid(torch.randn(3, 7))  # rank 0's, not this machine's
    assert sent and kernels.made() == rank0_made
    alone = SimpleNamespace(world_size=1, global_rank=0, strategy=strategy)
    kernels.configure(cache_dir=str(tmp_path))
    KeepChoices(RunChoices(), tmp_path, rank0=True).on_train_start(alone, None)
    assert len(sent) == 1 and not kernels.tanh_via_sigmoid(torch.randn(3, 7))  # no broadcast
