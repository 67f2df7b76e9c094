"""The command line as a user meets it: typos answered in one line before Hydra and torch, no run
dir left by a refused run, a quiet console with the config in the run's log."""

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf

from rnnlab.config.build import build
from rnnlab.config.cli import _remove_refused_run_dir, command_line_problem
from rnnlab.config.console import ConsoleFilter
from rnnlab.errors import NO_GPU

CONF = ROOT / "conf"


def script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.parametrize("config, args, message", [
    ("train", ["data.batch_sise=64"], "unknown key 'data.batch_sise'; did you mean "
                                      "'data.batch_size'?"),
    ("train", ["trainer.max_epoch=3"], "unknown key 'trainer.max_epoch'; did you mean "
                                       "'trainer.max_epochs'?"),
    ("train", ["+data.batch_sise=64"], "unknown key 'data.batch_sise' (added with '+'); did you "
                                       "mean 'data.batch_size'?"),
    ("train", ["modle=lstm"], "unknown key 'modle'; did you mean 'model'?"),
    ("train", ["model=lstmm"], "unknown model 'lstmm'; did you mean 'model=lstm'? (model: gru, "
                               "lstm, rnn, rnn_scratch)"),
    ("train", ["--multirun", "model=rnn,lstmm"], "unknown model 'lstmm'; did you mean "
                                                 "'model=lstm'?"),
    ("train", ["ablation=sampling", "experiment=bset"], "did you mean 'experiment=best'?"),
    ("train", ["hydra/launcher=paralel"], "did you mean 'hydra/launcher=parallel'?"),
    ("train", ["hydra.sweep.dirr=x"], "did you mean 'hydra.sweep.dir'?"),
    ("train", ["+data.batch_size=8"], "'+data.batch_size' adds a key, but data.batch_size "
                                      "exists; drop the '+' to set it"),
    ("train", ["ngram_mix.order=10"], "to give ngram_mix a new key, write '+ngram_mix.order=10'"),
    ("train", ["+callbacks.stop._target_=pytorch_lightning.callbacks.EarlyStopping",
               "+callbacks.stop.monitr=val/ppl"],
     "unknown key 'callbacks.stop.monitr' (added with '+'): pytorch_lightning.callbacks."
     "EarlyStopping takes no argument 'monitr'; did you mean 'callbacks.stop.monitor'?"),
    ("train", ["data.sampling=random,sequential"], "add --multirun"),
    ("generate", ["ckpt_path=x.ckpt", "prefix=hello, world"],
     "prefix=hello, world is a sweep (the comma); to mean one string, quote it inside the "
     "shell's quotes: 'prefix=\"hello, world\"'"),
    ("forecast", ["data.tua=8"], "unknown key 'data.tua'; did you mean 'data.tau'?"),
    ("stats", ["stats.tpo=5"], "did you mean 'stats.top'?"),
])
def test_a_typo_is_named_with_the_closest_valid_name(config, args, message):
    problem = command_line_problem(CONF, config, args)
    assert problem is not None and message in problem and "\n" not in problem


@pytest.mark.parametrize("config, args", [
    ("train", []),
    ("train", ["ablation=sampling", "trainer.max_epochs=2"]),
    ("train", ["--multirun", "experiment=best", "seed=0,1,2", "hydra/launcher=parallel",
               "hydra.launcher.n_jobs=2"]),
    ("train", ["+ngram_mix.order=10", "trainer.precision=bf16-mixed",
               "data.splits=[0.8,0.1,0.1]"]),
    ("train", ["+callbacks.stop._target_=pytorch_lightning.callbacks.EarlyStopping",
               "+callbacks.stop.monitor=val/ppl"]),
    ("train", ["--multirun", "trainer=gpu", "hydra/launcher=slurm"]),  # the jobs run elsewhere
    ("generate", [f"ckpt_path={ROOT / 'pyproject.toml'}", 'prefix="hello, world"']),
    ("train", ["--cfg", "job", "data.batch_size=1"]),
    ("train", ["--hydra-help", "data.batch_sise=1"]),  # Hydra's help: Hydra's business
])
def test_valid_command_lines_pass(config, args):
    assert command_line_problem(CONF, config, args) is None


def test_trainer_gpu_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert command_line_problem(CONF, "train", ["trainer=gpu"]) == \
        f"trainer.accelerator=gpu: {NO_GPU}"
    # what Lightning itself refuses (a multirun job's Trainer) is one ValueError line too
    trainer = {"_target_": "pytorch_lightning.Trainer"}
    with pytest.raises(ValueError, match="MPSAccelerator") as e:
        build(OmegaConf.create({**trainer, "accelerator": "mps"}))
    assert "\n" not in str(e.value)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=f"^{NO_GPU}$"):
            build(OmegaConf.create({**trainer, "accelerator": "gpu"}))


def test_typo_exits_2_in_one_line_before_torch_and_hydras_run_dir(tmp_path):
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    path = os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])
    run_dir = tmp_path / "run"
    for args in (["data.batch_sise=64"], ["+data.batch_sise=64"], ["model=lstmm"]):
        r = script("train.py", *args, f"hydra.run.dir={run_dir}", env={"PYTHONPATH": path})
        assert r.returncode == 2 and r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
        assert not run_dir.exists()


@pytest.mark.slow
def test_a_refused_run_leaves_no_run_dir_and_a_good_one_a_quiet_console(corpus_file, tmp_path):
    tiny = [f"data.path={corpus_file}", "data.batch_size=4", "data.num_steps=8",
            "model.core.num_hiddens=16", "trainer.max_epochs=1", "torch_threads=1",
            "trainer.accelerator=cpu"]
    refused = tmp_path / "refused"
    r = script("train.py", *tiny, "data.sampling=shuffled", f"hydra.run.dir={refused}")
    assert r.returncode == 2 and not refused.exists()
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        "error: data.sampling='shuffled' is unknown; use one of ['random', 'sequential']"]
    assert r.stdout == ""  # no config dump, no summary line of a run that never ran

    good = tmp_path / "good"
    r = script("train.py", *tiny, f"hydra.run.dir={good}")
    assert r.returncode == 0, r.stderr[-2000:]
    console, log = r.stdout + r.stderr, (good / "train.log").read_text()
    assert "config:" in log and "print_config: false" in log and "Tip:" in log
    for noise in ("config:", "print_config", "Tip:", "deprecated", "Seed set to"):
        assert noise not in console
    assert "epoch 1/1" in console and "summary:" in console

    r = script("train.py", *tiny, "train=false", "test=false", "print_config=true",
               f"hydra.run.dir={tmp_path / 'shown'}")
    assert r.returncode == 0 and "print_config: true" in r.stdout



def test_a_refused_runs_dir_goes_only_while_nothing_of_value_is_in_it(compose_run, tmp_path):
    compose_run("train", [])
    run = tmp_path / "run"
    for extra in (None, "checkpoints", "tb", "notes.txt"):
        (run / ".hydra").mkdir(parents=True)
        (run / "train.log").write_text("")
        (run / "summary.json").write_text("{}")
        if extra:
            (run / extra).mkdir()
        _remove_refused_run_dir()
        assert run.exists() == (extra is not None), extra
        shutil.rmtree(run, ignore_errors=True)


# ---- where a warning comes from, not what its path contains ----------------------------------
VENV = "/home/u/rnnlab/.venv/lib/python3.11/site-packages"
CHECKOUT_PATH = ["/home/u/rnnlab/scripts", "/usr/lib/python311.zip", "/usr/lib/python3.11",
                 VENV, "/home/u/rnnlab/src", "/home/u/rnnlab"]


def warning_record(filename: str, category=FutureWarning, path=CHECKOUT_PATH):
    from rnnlab.config.console import warning_module

    record = logging.LogRecord("py.warnings", logging.WARNING, filename, 21,
                               "%s:21: FutureWarning: isinstance(treespec, LeafSpec) is "
                               "deprecated", (filename,), None)
    record.category, record.warned_from = category, warning_module(filename, path, modules={})
    return record


@pytest.mark.parametrize("filename, module, shown", [
    (f"{VENV}/pytorch_lightning/utilities/_pytree.py", "pytorch_lightning.utilities._pytree",
     False),
    (f"{VENV}/torch/nn/modules/rnn.py", "torch.nn.modules.rnn", False),
    (f"{VENV}/rnnlab_extras/x.py", "rnnlab_extras.x", False),  # a name that starts like ours
    ("/home/u/rnnlab/src/rnnlab/models/lm.py", "rnnlab.models.lm", True),
    ("/home/u/rnnlab/src/rnnlab/__init__.py", "rnnlab", True),
    ("/home/u/rnnlab/src/hydra_plugins/rnnlab_sweepers/__init__.py",
     "hydra_plugins.rnnlab_sweepers", True),
])
def test_console_filter_goes_by_the_warnings_module_not_its_path(filename, module, shown):
    record = warning_record(filename)
    assert record.warned_from == module
    assert ConsoleFilter().filter(record) is shown
    # a UserWarning of any package is shown; the log file (no filter) keeps everything
    assert ConsoleFilter().filter(warning_record(filename, UserWarning)) is True


def test_a_warnings_module_is_found_through_the_loaded_modules_first(tmp_path):
    from rnnlab.config.console import warning_module

    assert warning_module(logging.__file__) == "logging"
    assert warning_module(str(ROOT / "src" / "rnnlab" / "config" / "cli.py")) == "rnnlab.config.cli"
    assert warning_module("/nowhere/x.py", path=[], modules={}) == ""


@pytest.mark.parametrize("message, shown", [
    ("GPU available: False, used: False", False),
    ("TPU available: False, using: 0 TPU cores", False),
    ("HPU available: False, using: 0 HPUs", False),
    ("IPU available: False, using: 0 IPUs", False),
    ("LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]", False),
    ("Using bfloat16 Automatic Mixed Precision (AMP)", False),
])
def test_lightnings_availability_lines_stay_off_the_console(message, shown):
    record = logging.LogRecord("pytorch_lightning.utilities.rank_zero", logging.INFO, "x", 1,
                               message, None, None)
    assert ConsoleFilter().filter(record) is shown
    record.levelno = logging.WARNING  # Lightning's warnings are still shown
    assert ConsoleFilter().filter(record) is True
    ours = logging.LogRecord("rnnlab.training.run", logging.INFO, "x", 1, message, None, None)
    assert ConsoleFilter().filter(ours) is True  # only Lightning's own lines are held back


# ---- bad values: one line, exit 2, before torch ----------------------------------------------
@pytest.mark.parametrize("config, args, message", [
    ("train", ["data.sampling=randm"], "data.sampling='randm' is unknown"),
    ("train", ["bptt=full", "data.sampling=random"], "needs data.sampling=sequential"),
    ("train", ["model=lstm", "model.core.num_layers=0"], "model.core.num_layers=0 must be a "
                                                         "positive integer"),
    ("train", ["data.batch_size=-1"], "data.batch_size=-1 must be a positive integer"),
    ("train", ["model.dropout=1.0"], "model.dropout=1.0 must be in [0, 1)"),
    ("train", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 must be >= 0"),
    ("train", ["eval.dynamic=true", "eval.decay=[0,1]"], "eval.decay=[0, 1] must be numbers"),
    ("train", ["+ngram_mix.order=0"], "ngram_mix.order=0 must be a positive integer"),
    ("train", ["torch_threads=0"], "torch_threads=0 must be a positive integer"),
    ("train", ["data.token=wrd"], "data.token='wrd' is unknown"),
    ("train", ["data.splits=[0.9,0.2,0.1]"], "data.splits=[0.9, 0.2, 0.1] must be 3"),
    ("train", ["trainer.precision=bf16-mix"], "trainer.precision='bf16-mix' is unknown"),
    ("forecast", ["data.noise=-0.5"], "data.noise=-0.5 must be >= 0"),
    ("stats", ["data.token=chars"], "data.token='chars' is unknown"),
    ("generate", ["ckpt_path=x", "temperature=-1"], "temperature=-1 must be >= 0"),
    ("generate", [], "ckpt_path is not set; pass the checkpoint to generate from"),
    ("generate", ["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt does not exist"),
    ("train", ["data.splits=[1.0,0,0]"], "data.splits=[1.0, 0, 0] leaves no validation split"),
    ("train", ["data.splits=[0.95,0.05,0]"], "leaves no test split, but test=true; give test a "
                                             "fraction, e.g. data.splits=[0.9,0.05,0.05], or "
                                             "set test=false"),
])
@pytest.mark.slow
def test_a_bad_value_is_found_from_the_config_alone(config, args, message):
    assert message in (command_line_problem(CONF, config, args) or "")
    # in a multirun a bad value fails its own job (the others go on), as documented
    assert command_line_problem(CONF, config, ["--multirun", *args]) is None


@pytest.mark.slow
def test_a_bad_value_exits_2_with_one_line_no_run_dir_and_without_importing_torch(tmp_path):
    run_dir = tmp_path / "run"
    code = ("import sys; sys.argv = ['train.py', 'data.sampling=randm', "
            f"'hydra.run.dir={run_dir}']\n"
            "from rnnlab.config.cli import check_command_line\n"
            "try:\n"
            f"    check_command_line(__import__('pathlib').Path({str(CONF)!r}), 'train')\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules, 'pytorch_lightning' in "
            "sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "exit 2 False False", r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        "error: data.sampling='randm' is unknown; use one of ['random', 'sequential']"]
    r = script("train.py", "data.sampling=randm", f"hydra.run.dir={run_dir}")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stdout == ""
    assert not run_dir.exists()


@pytest.mark.slow
def test_bf16_on_a_cpu_without_it_is_refused_before_torch(monkeypatch):
    from rnnlab.config import checks

    monkeypatch.setattr(checks, "cpu_flags", lambda *a: {"sse2", "avx2", "fma"})  # AVX2 only
    problem = command_line_problem(CONF, "train", ["trainer=cpu", "trainer.precision=bf16-mixed"])
    assert problem.startswith("trainer.precision=bf16-mixed: this CPU has no bf16 support")
    assert "avx512bw, avx512vl, avx512dq" in problem
    assert command_line_problem(CONF, "train", ["trainer=cpu"]) is None  # auto: decided later
    monkeypatch.setattr(checks, "cpu_flags", lambda *a: {"sse2", "avx512bw", "avx512vl",
                                                          "avx512dq", "amx_bf16"})
    assert command_line_problem(CONF, "train", ["trainer=cpu",
                                                "trainer.precision=bf16-mixed"]) is None


# ---- a user's own runs: the mistakes a first run on one's own text makes ----------------------
def test_a_run_dir_as_ckpt_path_is_answered_with_its_last_checkpoint(tmp_path):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    for config in ("train", "generate"):
        problem = command_line_problem(CONF, config, [f"ckpt_path={tmp_path / 'run'}"])
        assert problem == f"ckpt_path={tmp_path / 'run'} is a directory; pass ckpt_path={last}"
    assert command_line_problem(CONF, "train", ["data.splits=[0.95,0.05,0]", "test=false"]) \
        is None


def test_a_home_dir_tilde_says_how_to_write_it():
    problem = command_line_problem(CONF, "train", ["data.path=~/tiny.txt"])
    assert problem == ("data.path=~/tiny.txt: Hydra's override syntax takes no unquoted '~'; "
                       "write data.path=$HOME/tiny.txt or quote it: 'data.path=\"~/tiny.txt\"' "
                       "(~ is expanded)")


def test_generate_without_a_checkpoint_and_the_resolved_hydra_config(tmp_path):
    r = script("generate.py")
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ckpt_path is not set") and len(r.stderr.splitlines()) == 1
    # the run and sweep dirs resolve on their own, though Hydra's node is printed without paths
    r = script("train.py", "--cfg", "hydra", "--resolve")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"dir: {ROOT}/outputs/runs/" in r.stdout and f"dir: {ROOT}/outputs/multiruns/" \
        in r.stdout
