"""Killed sweeps finish on a second launch with identical results; bad relaunches are refused."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from rnnlab.report import write_report
from rnnlab.resume import previous_run
from rnnlab.validate import ConfigError

# ~120 steps an epoch on the tiny corpus: a job lasts a few seconds, long enough to be cut
TINY = ["data.batch_size=4", "data.num_steps=6", "model.core.num_hiddens=8",
        "trainer.max_epochs=3", "trainer.accelerator=cpu", "callbacks.sample_text.every_n_epochs=0",
        "torch_threads=1"]
SAME = ("best_val_ppl", "final_val_ppl", "test_ppl", "train_ppl", "epochs", "global_step",
        "clipped_fraction", "max_grad_norm")


def command(corpus: Path, sweep_dir: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts/train.py"), "--multirun", f"data.path={corpus}",
            *TINY, f"hydra.sweep.dir={sweep_dir}", *args]


def launch(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def launch_and_kill(cmd: list[str], after: list[str]) -> None:
    """Start the sweep in its own process group; SIGTERM the group (as a terminal, SLURM or
    systemd do) once each text in `after` has appeared in its output, in order."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    waiting = list(after)
    for line in proc.stdout:
        if waiting and waiting[0] in line:
            waiting.pop(0)
        if not waiting:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    proc.wait(timeout=120)
    # joblib's idle workers and resource trackers outlive their parent (they ignore SIGTERM):
    # once no job is left saving its checkpoint, end the group
    sweep_dir = Path(next(a for a in cmd if a.startswith("hydra.sweep.dir=")).split("=", 1)[1])
    deadline = time.monotonic() + 10  # a tiny job saves in well under a second
    while time.monotonic() < deadline and any(
            s.get("status") == "running" for s in summaries(sweep_dir).values()):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.stdout.close()
    assert not waiting, "the sweep ended before it could be killed"


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def ppl_rows(sweep_dir: Path) -> list[tuple]:
    write_report([sweep_dir])
    rows = json.loads((sweep_dir / "report.json").read_text())["rows"]
    return [(r["config"], r["best_val_ppl"]["mean"], r["final_val_ppl"]["mean"],
             r["test_ppl"]["mean"], r["status"]) for r in rows]


@pytest.mark.parametrize("launcher, kill_after", [
    ("hydra/launcher=basic", ["#1 :", "epoch 1/"]),   # job 0 done, job 1 under way
    ("hydra/launcher=parallel", ["epoch 2/"]),        # jobs 0 and 1 under way, job 2 not begun
])
def test_killed_sweep_finishes_on_relaunch_as_if_never_killed(tmp_path, corpus_file, launcher,
                                                              kill_after):
    grid = [launcher, "model=rnn,gru,lstm"]
    launch(command(corpus_file, tmp_path / "straight", *grid))
    cut = tmp_path / "cut"
    launch_and_kill(command(corpus_file, cut, *grid), kill_after)
    before = summaries(cut)
    assert any(s["status"] == "interrupted" for s in before.values())
    log = launch(command(corpus_file, cut, *grid))
    assert "resuming from" in log
    after, expected = summaries(cut), summaries(tmp_path / "straight")
    assert set(after) == set(expected) and all(s["status"] == "finished" for s in after.values())
    for name, s in after.items():
        assert {k: s.get(k) for k in SAME} == pytest.approx({k: expected[name].get(k)
                                                             for k in SAME}, rel=1e-9)
        if before.get(name, {}).get("status") == "finished":
            assert s == before[name]  # not trained again: its summary untouched
            assert f"job {name}: finished in an earlier launch, not trained again" in log
    assert ppl_rows(cut) == ppl_rows(tmp_path / "straight")


def test_relaunch_into_a_dir_of_another_sweep_is_one_line_and_status_2(tmp_path, corpus_file):
    sweep_dir = tmp_path / "s"
    launch(command(corpus_file, sweep_dir, "trainer.max_epochs=1", "model=rnn"))
    proc = subprocess.run(command(corpus_file, sweep_dir, "trainer.max_epochs=1", "model=gru"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: hydra.sweep.dir={sweep_dir} holds "
                                                     f"another sweep (overrides.model: rnn there, "
                                                     f"gru now)")


def _job(tmp_path: Path, cfg_factory, status: str, **extra) -> tuple:
    cfg = cfg_factory("model.dropout=0.1")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    from rnnlab.cli import save_config

    save_config(cfg, out)
    summary = {"status": status, "best_val_ppl": 5.5, **extra}
    (out / "summary.json").write_text(json.dumps(summary))
    return cfg, out, summary


def test_a_job_dir_of_another_config_is_refused_naming_the_key(tmp_path, cfg_factory):
    _, out, summary = _job(tmp_path, cfg_factory, "finished")
    changed = cfg_factory("model.dropout=0.2")
    with pytest.raises(ConfigError, match=r"holds a job of another config \(model.dropout: 0.1 "
                                          r"there, 0.2 now\).*new hydra.sweep.dir"):
        previous_run(changed, out, summary)
    same_but_resources = cfg_factory("model.dropout=0.1", "torch_threads=2", "retry_failed=true")
    assert previous_run(same_but_resources, out, summary) == 5.5  # finished: its metric back


@pytest.mark.parametrize("status, retry, expect", [
    ("failed", False, "raise"), ("failed", True, None), ("diverged", False, 5.5),
    ("diverged", True, None), ("interrupted", False, "resume"), ("running", False, None)])
def test_what_a_relaunch_does_with_each_earlier_status(tmp_path, cfg_factory, status, retry,
                                                       expect):
    cfg, out, summary = _job(tmp_path, cfg_factory, status, error="ValueError: boom")
    if expect == "resume":
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    cfg.retry_failed = retry
    if expect == "raise":
        with pytest.raises(RuntimeError, match="failed in an earlier launch .*boom.*retry_failed"):
            previous_run(cfg, out, summary)
        return
    got = previous_run(cfg, out, summary)
    if expect == "resume":
        assert got is None and cfg.ckpt_path == str(out / "checkpoints" / "last.ckpt")
    else:
        assert got == expect and cfg.get("ckpt_path") is None
