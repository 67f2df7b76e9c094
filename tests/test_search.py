"""The Optuna search: seeded, resumable after a kill with the same trials, extendable; bad
search settings refused with one line naming the parameter."""

import json
import subprocess
import sys

import optuna
import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from test_resumable_sweeps import launch, launch_and_kill

from rnnlab.search import Search
from rnnlab.validate import ConfigError

SPACE = ["model.core.num_hiddens=choice(8,16)", "model.embedding_dim=choice(4,8)",
         "data.num_steps=choice(4,6)", "model.optimizer.lr=tag(log,interval(0.001,0.02))",
         "model.dropout=interval(0,0.5)", "model.core.weight_drop=interval(0,0.5)"]


def search_cmd(corpus, sweep_dir, n_trials=3):
    return [sys.executable, str(ROOT / "scripts/train.py"), "hparams_search=optuna",
            f"data.path={corpus}", "data.batch_size=4", "trainer.max_epochs=1",
            "trainer.accelerator=cpu", "torch_threads=1", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweep.dir={sweep_dir}", *SPACE]


def trials(sweep_dir):
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep_dir}/study.db")
    return [(t.number, t.state.name, t.value, t.params) for t in study.trials]


def test_killed_search_finishes_with_the_same_trials_and_can_be_extended(tmp_path, corpus_file):
    launch(search_cmd(corpus_file, tmp_path / "straight"))
    cut = tmp_path / "cut"
    launch_and_kill(search_cmd(corpus_file, cut), ["trial 0: val/ppl", "#1 :"])
    first = json.loads((cut / "0_trial" / "summary.json").read_text())
    log = launch(search_cmd(corpus_file, cut))
    assert "1 to run again (killed)" in log and "job 0_trial: finished" not in log
    assert trials(cut) == trials(tmp_path / "straight")  # same parameters, same val/ppl
    assert json.loads((cut / "0_trial" / "summary.json").read_text()) == first
    launch(search_cmd(corpus_file, cut, n_trials=4))  # extend: one more trial, nothing rerun
    assert trials(cut)[:3] == trials(tmp_path / "straight") and len(trials(cut)) == 4
    assert json.loads((cut / "0_trial" / "summary.json").read_text()) == first


def check(tmp_path, arguments, extra=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True,
                      overrides=["hparams_search=optuna", f"hydra.sweep.dir={tmp_path}", *extra])
        loader = GlobalHydra.instance().config_loader()
        search = Search(cfg, loader, None, cfg.hydra.sweeper.params, 3, 1, 0, 2, "search")
        from rnnlab.search import parse_space

        search.check(*parse_space(search.params, ["hparams_search=optuna", *extra, *arguments]))
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("arguments, extra, match", [
    (["model.core.num_hidens=choice(8,16)"], [],
     r"unknown search parameter model.core.num_hidens .*\+model.core.num_hidens"),
    (["model.dropout=interval(0.5,0.1)"], [], r"params.model.dropout=interval\(0.5,0.1\) is "
                                              r".*low=0.5, high=0.1.*with low < high"),
    (["model.dropout=interval(0,1)"], [], r"model.dropout=interval\(0,1\) reaches a bad "
                                          r"setting: model.dropout=1.0 must be in \[0, 1\)"),
    ([], ["ablation=models"], r"hparams_search cannot be combined with ablation=models"),
])
def test_bad_search_settings_name_the_parameter(tmp_path, arguments, extra, match):
    with pytest.raises(ConfigError, match=match):
        check(tmp_path, arguments, extra)


def test_a_bad_search_is_one_line_and_status_2(tmp_path, corpus_file):
    proc = subprocess.run(search_cmd(corpus_file, tmp_path / "s")[:-6]
                          + ["model.dropout=interval(0.5,0.1)"],
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1
    assert errors[0].startswith("error: hydra.sweeper.params.model.dropout=interval(0.5,0.1) is")
