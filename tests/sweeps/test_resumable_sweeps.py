"""Killed sweeps finish on a second launch with identical results; bad relaunches are refused."""

import contextlib
import io
import json
import logging
import os
import runpy
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import hydra
import pytest
from conftest import ROOT, TEXT
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from rnnlab.analysis.report import write_report
from rnnlab.errors import ConfigError
from rnnlab.training.relaunch import previous_run

# ~55 steps an epoch on the tiny corpus: a job trains for a second or two, long enough to be cut
TINY = ["data.batch_size=8", "data.num_steps=6", "model.core.num_hiddens=8",
        "trainer.max_epochs=2", "trainer.accelerator=cpu", "callbacks.sample_text.every_n_epochs=0",
        "~callbacks.gradients", "torch_threads=1"]
GRID = ["model=rnn,gru,lstm"]
SAME = ("best_val_ppl", "final_val_ppl", "test_ppl", "train_ppl", "epochs", "global_step",
        "clipped_fraction", "max_grad_norm")


def command(corpus: Path, sweep_dir: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts/train.py"), "--multirun", f"data.path={corpus}",
            *TINY, f"hydra.sweep.dir={sweep_dir}", *args]


def launch(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def run_here(cmd: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of scripts/train.py run in this process, as the command
    line `cmd` would run it: torch is imported here already, which saves a new process about 4
    s of CPU (three times that on a loaded machine). Hydra's logging, its global state and the
    project's console filter are put back afterwards. Only for what need not be killed, and
    for the basic launcher (the parallel one's workers must import the script)."""
    script = runpy.run_path(str(ROOT / "scripts/train.py"), run_name="train_script")
    root, loggers = logging.getLogger(), logging.Logger.manager.loggerDict
    saved = {name: (lg.level, lg.handlers[:], lg.propagate, lg.disabled)
             for name, lg in [("", root), *loggers.items()] if isinstance(lg, logging.Logger)}
    argv, showwarning = sys.argv, warnings.showwarning
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [str(ROOT / "scripts/train.py"), *cmd[2:]]
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            script["check_command_line"](ROOT / "conf", "train")
            # the script's task, under a Hydra main that finds conf/ by its absolute path
            hydra.main(version_base="1.3", config_path=str(ROOT / "conf"),
                       config_name="train")(script["main"].__wrapped__)()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv, warnings.showwarning = argv, showwarning
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for name, (level, handlers, propagate, disabled) in saved.items():
            lg = logging.getLogger(name or None)
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
    return code, out.getvalue(), err.getvalue()


def launch_here(cmd: list[str]) -> str:
    code, out, err = run_here(cmd)
    assert code == 0, err[-3000:]
    return out + err


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


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, sweep dir) of the grid run uninterrupted with the basic launcher: what every
    killed and relaunched sweep must end as, whatever its launcher (one thread a job)."""
    root = tmp_path_factory.mktemp("straight")
    corpus = root / "tiny.txt"
    corpus.write_text(TEXT * 8)
    launch_here(command(corpus, root / "sweep", "hydra/launcher=basic", *GRID))
    return corpus, root / "sweep"


@pytest.mark.parametrize("launcher, kill_after", [
    ("hydra/launcher=basic", ["#1 :", "epoch 1/"]),   # job 0 done, job 1 under way
    ("hydra/launcher=parallel", ["epoch 1/"]),        # jobs 0 and 1 under way, job 2 not begun
])
@pytest.mark.slow
def test_killed_sweep_finishes_on_relaunch_as_if_never_killed(tmp_path, straight, launcher,
                                                              kill_after):
    corpus, reference = straight
    cut = tmp_path / "cut"
    launch_and_kill(command(corpus, cut, launcher, *GRID), kill_after)
    before = summaries(cut)
    assert any(s["status"] == "interrupted" for s in before.values())
    again = command(corpus, cut, launcher, *GRID)  # the same command
    log = launch(again) if "parallel" in launcher else launch_here(again)
    assert "resuming from" in log
    after, expected = summaries(cut), summaries(reference)
    assert set(after) == set(expected) and all(s["status"] == "finished" for s in after.values())
    for name, s in after.items():
        # exact: the kernel choices are the machine's (kernels.cache_dir) and the run's own
        assert {k: s.get(k) for k in SAME} == {k: expected[name].get(k) for k in SAME}
        if before.get(name, {}).get("status") == "finished":
            assert s == before[name]  # not trained again: its summary untouched
            assert f"job {name}: finished in an earlier launch, not trained again" in log
    if "basic" in launcher:  # the report is made of the summaries: once is enough
        assert ppl_rows(cut) == ppl_rows(reference)


def test_relaunch_into_a_dir_of_another_sweep_is_one_line_and_status_2(straight):
    corpus, sweep_dir = straight
    kept = summaries(sweep_dir)
    code, _, stderr = run_here(command(corpus, sweep_dir, "hydra/launcher=basic", "model=rnn,gru"))
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"error: hydra.sweep.dir={sweep_dir} holds "
                                                     f"another sweep (overrides.model: "
                                                     f"rnn,gru,lstm there, rnn,gru now)")
    assert summaries(sweep_dir) == kept  # nothing of the sweep there touched


def _job(tmp_path: Path, cfg_factory, status: str, **extra) -> tuple:
    cfg = cfg_factory("model.dropout=0.1")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    from rnnlab.config.saved import save_config

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


def test_a_new_sweep_names_its_dir_and_how_to_finish_and_report_it(tmp_path, caplog):
    from rnnlab.sweeps.sweep import claim_sweep_dir

    caplog.set_level(logging.INFO, logger="rnnlab")
    sweep_dir = tmp_path / "multiruns" / "12-00-00-abc123"
    identity = {"kind": "grid", "params": {}, "overrides": {"model": "rnn,gru"}, "config": {}}
    claim_sweep_dir(sweep_dir, identity)
    assert f"sweep dir {sweep_dir} (the same command with hydra.sweep.dir={sweep_dir} finishes " \
           f"it if stopped; python scripts/report.py {sweep_dir} reports on it)" in caplog.text
    caplog.clear()
    claim_sweep_dir(sweep_dir, identity)  # launched again: the dir is the sweep's already
    assert "resuming the sweep in" in caplog.text and "sweep dir " not in caplog.text
