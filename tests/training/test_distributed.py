"""Data-parallel training (trainer=ddp, 2 CPU processes over gloo) against one process, its run
dirs, interruption and resume; the checks on devices and world sizes; GPU packing of sweeps."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_cfg, run_script
from omegaconf import OmegaConf, read_write

from rnnlab.errors import ConfigError
from rnnlab.models.generate import generate, load_checkpoint
from rnnlab.text.datamodule import PlanSampler
from rnnlab.training import distributed
from rnnlab.training.run import train

# DDP against one process: kernels and precision pinned, as the presets pin them, so that the
# comparison does not hang on this CPU's bf16 units (the ranks share rank 0's kernel choices
# whatever is pinned: training.choices)
PINNED = ["trainer.precision=32-true", "kernels.tanh=tanh", "kernels.matmul=torch",
          "kernels.linear=torch", "kernels.recurrence_dtype=float32"]
SMALL = ["data.batch_size=4", "data.num_steps=8", "model.core.num_hiddens=16",
         "model.embedding_dim=8", "model.dropout=0.2", "callbacks.sample_text.every_n_epochs=0",
         "torch_threads=1", *PINNED]
DDP = ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def cli(*args: str, timeout: int = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_script("scripts/train.py", *args, timeout=timeout, env=env)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


COMBOS = [(m, s) for m in ("rnn_scratch", "lstm") for s in ("sequential", "random")]


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path, corpus_file):
    # the 4 runs under one 2-rank launch (ranks start once), then the same configs in one process
    runs = [f"{m}_{s}=" + ";".join([*SMALL, "trainer.max_epochs=2", "test=false", f"model={m}",
                                     f"data.sampling={s}"]) for m, s in COMBOS]
    proc = run_script("tests/training/ddp_runs.py", str(tmp_path / "ddp"), str(corpus_file),
                      *runs, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for m, s in COMBOS:
        ddp = summary(tmp_path / "ddp" / f"{m}_{s}")
        single = make_cfg(tmp_path / f"{m}_{s}", corpus_file,
                          [*SMALL, "trainer.max_epochs=2", "test=false", f"model={m}",
                           f"data.sampling={s}"])
        train(single)
        one = summary(tmp_path / f"{m}_{s}" / "run")
        assert ddp["status"] == "finished" and ddp["global_step"] == one["global_step"]
        assert ddp["final_val_ppl"] == pytest.approx(one["final_val_ppl"], rel=1e-4), (m, s)
        assert ddp["train_ppl"] == pytest.approx(one["train_ppl"], rel=1e-4), (m, s)
        texts = [generate(load_checkpoint(x["checkpoints"]["last"]), "time traveller", 30)
                 for x in (ddp, one)]
        assert texts[0] == texts[1], (m, s)


@pytest.mark.slow
def test_ddp_jobs_of_a_multirun_each_have_one_run_dir(tmp_path, corpus_file):
    sweep = tmp_path / "sweep"
    proc = cli("--multirun", f"data.path={corpus_file}", *SMALL, *DDP, "trainer.max_epochs=1",
               "seed=0,1", f"hydra.sweep.dir={sweep}", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]  # ranks ran their job, not the sweep
    for job, seed in zip(jobs, (0, 1), strict=True):
        s = summary(job)
        assert s["status"] == "finished" and s["seed"] == seed and s["test_ppl"] > 1
        assert (job / "config.yaml").is_file() and (job / "train_rank1.log").is_file()
        pids = {p.name.rsplit(".", 2)[1] for p in (job / "tb").glob("events*")}
        assert len(pids) == 1  # one TensorBoard writer: rank 0
        assert [p.name for p in (job / "checkpoints").iterdir()].count("last.ckpt") == 1


@pytest.mark.slow
def test_sigterm_to_rank_0_stops_every_rank_and_the_run_resumes_exactly(tmp_path, corpus_file):
    common = [f"data.path={corpus_file}", *SMALL, "data.sampling=sequential", "test=false"]
    run_dir = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/train.py"), *common, *DDP,
         "trainer.max_epochs=100000", f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # both ranks print here; wait until training is under way
        if "epoch 2/" in line:
            break
    proc.send_signal(signal.SIGTERM)  # rank 0 only, as a user's kill would
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["global_step"] > 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == s["global_step"]
    assert ckpt["epoch_state"]["state"][0].shape[-2] == 4  # every row's state, not rank 0's
    epochs = s["epochs"] + 2
    resumed = cli(*common, *DDP, f"trainer.max_epochs={epochs}",
                  f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                  f"hydra.run.dir={tmp_path / 'resume'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    s = summary(run_dir)  # the resumed run went on in the interrupted run's dir
    assert s["status"] == "finished" and s["epochs"] == epochs
    straight = make_cfg(tmp_path / "one", corpus_file,
                        [*common[1:], f"trainer.max_epochs={epochs}"])
    train(straight)
    one = summary(tmp_path / "one" / "run")
    assert s["global_step"] == one["global_step"]
    assert s["final_val_ppl"] == pytest.approx(one["final_val_ppl"], rel=1e-4)
    assert s["train_ppl"] == pytest.approx(one["train_ppl"], rel=1e-4)  # sums over both ranks


def test_each_rank_takes_its_block_of_the_same_planned_minibatches():
    one = list(PlanSampler(10_000, 8, 16, "random", "randomized", seed=3))
    ranks = [list(PlanSampler(10_000, 8, 16, "random", "randomized", seed=3, rank=r,
                              world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)  # ranks must not wait on each other
    for w, a, b in zip(one, *ranks, strict=True):
        assert a.length == b.length == w.length
        assert torch.equal(torch.cat([a.starts, b.starts]), w.starts)
    seq = list(PlanSampler(10_000, 8, 16, "sequential", "regular", seed=0, rank=1, world_size=4))
    for prev, nxt in zip(seq, seq[1:]):  # rank 1's rows go on where they stopped
        assert torch.equal(nxt.starts, prev.starts + prev.length)


@pytest.mark.parametrize("overrides, match", [
    (["trainer.devices=2", "data.batch_size=5"], r"data.batch_size=5 is not divisible by the "
                                                 r"world size 2 .*data.batch_size=6"),
    (["trainer.devices=2", "trainer.num_nodes=4", "data.batch_size=4"],
     r"world size 8 .* larger than the 4 streams of data.batch_size=4"),
    (["trainer.devices=2", "trainer.num_nodes=4", "data.batch_size=4", "bptt=full"],
     r"bptt=full trains on data.batch_size=4 whole streams, fewer than the 8 ranks"),
    (["trainer.devices=64"], r"trainer.devices=64 asks for 64 CPU processes but this machine "
                             r"has \d+ CPU cores; use trainer.devices=\d+"),
    (["trainer.use_distributed_sampler=true"], r"use_distributed_sampler=true .* set it to false"),
])
def test_bad_world_sizes_are_refused_with_the_key_and_the_fix(cfg_factory, overrides, match):
    cfg = cfg_factory(*DDP, *overrides)
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_ddp_with_one_device_warns_and_runs_one_process(cfg_factory, caplog):
    cfg = cfg_factory("trainer=ddp", "trainer.devices=1", "trainer.accelerator=cpu",
                      "test=false")
    distributed.check_distributed(cfg)
    assert "trainer=ddp with trainer.devices=1" in caplog.text


@pytest.mark.slow
def test_gpu_requested_without_a_gpu_is_one_line_and_exit_2(corpus_file, tmp_path):
    hide = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, on any machine
    for extra in (["trainer=gpu"], ["trainer=ddp", "trainer.accelerator=gpu"]):
        proc = cli(f"data.path={corpus_file}", *extra, f"hydra.run.dir={tmp_path / 'gpu'}",
                   env=hide)
        errors = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
        assert errors[0].startswith("error: trainer.accelerator=gpu: no GPU found")
        assert "trainer=cpu" in errors[0]


@pytest.mark.slow
def test_packed_sweep_puts_job_i_on_gpu_i_mod_n(cfg_factory, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    from hydra.core.hydra_config import HydraConfig

    got = []
    for job in range(7):
        cfg = cfg_factory("trainer=gpu", "trainer.accelerator=gpu", "hydra/launcher=parallel",
                          "hydra.launcher.n_jobs=7")
        with read_write(cfg.hydra.job):
            cfg.hydra.job.num = job
        HydraConfig.instance().set_config(cfg)
        got.append(distributed.pack_gpu(cfg))
        assert OmegaConf.to_container(cfg.trainer.devices) == [got[-1]]
    assert got == [0, 1, 2, 0, 1, 2, 0]
    cfg = cfg_factory("trainer=gpu", "trainer.accelerator=gpu")  # not a sweep: left as chosen
    assert distributed.pack_gpu(cfg) is None and cfg.trainer.devices == 1
