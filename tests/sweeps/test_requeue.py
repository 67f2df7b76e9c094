"""A cluster job at its time limit is requeued by submitit and resumes to the same result.

The sweep runs through hydra/launcher=local: submitit's local executor, the code path of
hydra/launcher=slurm without a cluster. One job gets submitit's time-limit signal (SIGUSR2) at
a fixed training step, as submitit's controller sends it `signal_delay_s` before the limit (a
signal at a step, not a clock, so the test is the same on a loaded machine); the other runs
straight through. The signalled job must save last.ckpt, be requeued by submitit into its own
job dir, resume there and end with the straight job's val/ppl.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT
from test_resumable_sweeps import SAME

pytestmark = pytest.mark.slow  # the whole module runs training end to end

STEPS_PER_EPOCH = 112  # the tiny corpus at batch 4 x 6 steps
TINY = ["data.batch_size=4", "data.num_steps=6", "model.core.num_hiddens=8",
        "trainer.max_epochs=2", "trainer.accelerator=cpu", "callbacks.sample_text.every_n_epochs=0",
        "~callbacks.gradients", "torch_threads=1"]


def test_a_job_signalled_at_its_time_limit_is_requeued_and_resumes_to_the_same_val_ppl(
        tmp_path, corpus_file):
    sweep = tmp_path / "sweep"
    cut_at = STEPS_PER_EPOCH + 30  # in the last epoch; the other job's step is never reached
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/train.py"), "--multirun", "hydra/launcher=local",
         f"data.path={corpus_file}", *TINY, f"hydra.sweep.dir={sweep}",
         "+callbacks.limit._target_=conftest.SignalAtStep",
         f"+callbacks.limit.signum={int(signal.SIGUSR2)}", f"+callbacks.limit.step={cut_at},-1"],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {dict(o.split("=", 1) for o in json.loads(p.read_text())["overrides"])[
        "+callbacks.limit.step"]: p.parent for p in sweep.glob("*/summary.json")}
    cut, straight = (json.loads((jobs[k] / "summary.json").read_text()) for k in (str(cut_at),
                                                                                "-1"))
    submitit_logs = "".join(p.read_text(errors="replace")
                            for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_logs  # submitit's own requeue, after our checkpoint
    train_log = (jobs[str(cut_at)] / "train.log").read_text()
    assert f"job {jobs[str(cut_at)].name}: interrupted in an earlier launch, resuming from" \
        in train_log
    assert "SIGUSR2 received: saving last.ckpt" in train_log
    assert cut["status"] == straight["status"] == "finished"
    # exact: the requeued job reuses the kernel choices and precision its checkpoint recorded
    assert {k: cut.get(k) for k in SAME} == {k: straight.get(k) for k in SAME}
    assert cut["choices_from"].startswith("checkpoint ")
