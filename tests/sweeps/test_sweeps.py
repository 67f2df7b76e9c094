"""Sweeps through Hydra's launchers, in subprocesses (the way users run them)."""

import json
from pathlib import Path

import pytest
from conftest import run_script

pytestmark = pytest.mark.slow  # the whole module runs training end to end

TINY = ["data.batch_size=2", "data.num_steps=5", "model.core.num_hiddens=8",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "callbacks.sample_text.every_n_epochs=0"]


def sweep(tmp_path: Path, corpus: Path, *args: str) -> list[dict]:
    out = tmp_path / "sweep"
    proc = run_script("scripts/train.py", "--multirun", f"data.path={corpus}", *TINY,
                      f"hydra.sweep.dir={out}", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]


def test_joblib_launcher_runs_jobs_in_parallel_with_one_thread_each(tmp_path, corpus_file):
    summaries = sweep(tmp_path, corpus_file, "hydra/launcher=parallel",
                      "hydra.launcher.n_jobs=2", "model=rnn_scratch,rnn")
    assert len(summaries) == 2 and all(s["status"] == "finished" for s in summaries)
    assert {s["model"] for s in summaries} == {"rnn_scratch", "rnn"}
    import os

    assert all(s["torch_threads"] == max(1, (os.cpu_count() or 1) // 2) for s in summaries)


def test_submitit_local_launcher_runs_the_same_sweep(tmp_path, corpus_file):
    summaries = sweep(tmp_path, corpus_file, "hydra/launcher=local", "torch_threads=1",
                      "data.sampling=random,sequential")
    assert {s["sampling"] for s in summaries} == {"random", "sequential"}
    assert all(s["status"] == "finished" and s["best_val_ppl"] > 1 for s in summaries)
