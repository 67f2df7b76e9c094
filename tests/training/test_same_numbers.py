"""Same command, same numbers: on the defaults (no pinned kernels or precision), two runs in new
processes, one while other processes load the CPU, and a resume under load, agree to the digit.

The kernel choices are timed once per machine (kernels.cache_dir, here the default) and kept
with the run (choices.json, the checkpoint); a busy machine would otherwise flip near-ties.
"""

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_script

TINY = ["data.batch_size=16", "data.num_steps=8", "model.core.num_hiddens=32",
        "trainer.max_epochs=2", "callbacks.sample_text.every_n_epochs=0",
        "callbacks.checkpoint.save_top_k=-1",  # every epoch's checkpoint kept, to resume from
        "~callbacks.gradients"]
NUMBERS = ("best_val_ppl", "final_val_ppl", "test_ppl", "train_ppl")


@contextlib.contextmanager
def busy_cpu(processes: int = 2):
    """Other processes spinning on the CPU while the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(processes)]
    try:
        yield
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


def numbers(job_dir: Path) -> dict:
    s = json.loads((job_dir / "summary.json").read_text())
    assert s["status"] == "finished", s.get("error")
    return {k: s[k] for k in NUMBERS} | {"precision": s["precision"], "kernels": s["kernels"]}


def jobs(sweep: Path) -> dict[str, Path]:
    return {p.parent.name.split("model=")[1]: p.parent for p in sweep.glob("*/summary.json")}


@pytest.mark.slow
def test_same_command_gives_the_same_numbers_under_load_and_after_a_resume(tmp_path,
                                                                           corpus_file):
    sweep = ["--multirun", "model=rnn_scratch,lstm", f"data.path={corpus_file}", *TINY]
    quiet = run_script("scripts/train.py", *sweep, f"hydra.sweep.dir={tmp_path / 'quiet'}")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    with busy_cpu():
        loaded = run_script("scripts/train.py", *sweep, f"hydra.sweep.dir={tmp_path / 'busy'}")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    straight, busy = jobs(tmp_path / "quiet"), jobs(tmp_path / "busy")
    assert set(straight) == set(busy) == {"rnn_scratch", "lstm"}
    for model in straight:
        assert numbers(busy[model]) == numbers(straight[model]), model

    # the quiet sweep made as if each job was killed after epoch 1 (its last.ckpt that epoch's),
    # then launched again under load: both jobs resume from there in one new process
    want = {model: numbers(job) for model, job in straight.items()}
    relaunched = tmp_path / "quiet"
    for job in jobs(relaunched).values():
        ckpts = job / "checkpoints"
        for later in ckpts.glob("best-epoch001-*.ckpt"):
            later.unlink()
        shutil.copy(next(ckpts.glob("best-epoch000-*.ckpt")), ckpts / "last.ckpt")
        summary = json.loads((job / "summary.json").read_text())
        (job / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
        (job / "choices.json").unlink()  # what the checkpoint recorded is what counts
    with busy_cpu():
        again = run_script("scripts/train.py", *sweep, f"hydra.sweep.dir={relaunched}")
    assert again.returncode == 0, again.stderr[-3000:]
    for model, job in jobs(relaunched).items():
        assert "resuming from" in (job / "train.log").read_text()
        got = numbers(job)
        assert {k: got[k] for k in NUMBERS} == {k: want[model][k] for k in NUMBERS}, model
        assert json.loads((job / "summary.json").read_text())["choices_from"].startswith(
            "checkpoint "), model
