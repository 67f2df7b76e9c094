"""The Optuna search: seeded, resumable after a kill with the same trials, extendable; its
report (trials ranked, the best as an experiment overlay that trains it again, search.png); bad
search settings refused with one line naming the parameter."""

import json
import shutil
import sys

import optuna
import pytest
import yaml
from conftest import ROOT, TEXT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from test_resumable_sweeps import launch_and_kill, launch_here, run_here

from rnnlab.analysis.report import write_report
from rnnlab.analysis.search_report import Trial, ranked
from rnnlab.errors import ConfigError
from rnnlab.sweeps.search import Search
from rnnlab.training.relaunch import comparable, config_differences

SPACE = ["model.core.num_hiddens=choice(8,16)", "model.embedding_dim=choice(4,8)",
         "data.num_steps=choice(4,6)", "model.optimizer.lr=tag(log,interval(0.001,0.02))",
         "model.dropout=interval(0,0.5)", "model.core.weight_drop=interval(0,0.5)"]


def search_cmd(corpus, sweep_dir, n_trials=3):
    return [sys.executable, str(ROOT / "scripts/train.py"), "hparams_search=optuna",
            f"data.path={corpus}", "data.batch_size=4", "trainer.max_epochs=1",
            "trainer.accelerator=cpu", "~callbacks.gradients", "torch_threads=1",
            f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweep.dir={sweep_dir}", *SPACE]


def trials(sweep_dir):
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep_dir}/study.db")
    return [(t.number, t.state.name, t.value, t.params) for t in study.trials]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """(corpus, sweep dir) of a 3-trial search run straight through."""
    root = tmp_path_factory.mktemp("search")
    corpus = root / "tiny.txt"
    corpus.write_text(TEXT * 8)
    launch_here(search_cmd(corpus, root / "straight"))
    return corpus, root / "straight"


@pytest.mark.slow
def test_killed_search_finishes_with_the_same_trials_and_can_be_extended(tmp_path, searched):
    corpus, straight = searched
    cut = tmp_path / "cut"
    launch_and_kill(search_cmd(corpus, cut, n_trials=2), ["trial 0: val/ppl", "#1 :"])
    first = json.loads((cut / "0_trial" / "summary.json").read_text())
    # the same command with one more trial: the killed trial is run again, then one is added
    log = launch_here(search_cmd(corpus, cut, n_trials=3))
    assert "1 trials done, 1 to run again (killed), 1 to go" in log
    assert "job 0_trial: finished" not in log  # trial 0 is done: not even launched again
    assert trials(cut) == trials(straight)  # same parameters, same val/ppl
    assert json.loads((cut / "0_trial" / "summary.json").read_text()) == first


@pytest.mark.slow
def test_report_ranks_trials_and_writes_an_overlay_that_trains_the_best_again(tmp_path,
                                                                             searched):
    corpus, sweep = searched
    markdown, written = write_report([sweep])
    report = json.loads((sweep / "report.json").read_text())["search"]
    values = sorted((v, n) for n, state, v, _ in trials(sweep) if state == "COMPLETE")
    assert [(t["value"], t["number"]) for t in report["trials"]] == values
    assert report["best_trial"] == values[0][1]
    assert "## Search" in markdown and f"| 1 ★ | {values[0][1]} | **{values[0][0]:.4f}**" \
        in markdown
    assert sweep / "best_experiment.yaml" in written and sweep / "search.png" in written
    assert (sweep / "search.png").read_bytes()[:4] == b"\x89PNG"
    overlay = yaml.safe_load((sweep / "best_experiment.yaml").read_text())
    assert overlay.pop("defaults") == ["search_lstm", "_self_"]
    assert leaves(overlay) == {line.split("=", 1)[0] for line in SPACE}  # the searched keys only
    # pasted as conf/experiment/tuned.yaml, it trains the best trial again, scored on test
    conf = tmp_path / "conf"
    (conf / "experiment").mkdir(parents=True)
    shutil.copy(sweep / "best_experiment.yaml", conf / "experiment" / "tuned.yaml")
    # with the rest of the command the report gives
    fixed = markdown.split("python scripts/train.py experiment=<name> ", 1)[1].split("`")[0]
    assert fixed.split() == search_cmd(corpus, sweep)[3:9]
    best = sweep / f"{values[0][1]}_trial"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        again = compose("train", return_hydra_config=True, overrides=[
            "experiment=tuned", f"hydra.searchpath=[file://{conf}]", *fixed.split()])
    GlobalHydra.instance().clear()
    with open_dict(again):  # in the trial's dir, so that the paths derived from it agree
        again.hydra.runtime.output_dir = str(best)
    HydraConfig.instance().set_config(again)
    trained = yaml.safe_load((best / "config.yaml").read_text())
    try:
        assert config_differences(comparable(trained), comparable(again)) == \
            ["test: False there, True now"]
    finally:
        HydraConfig.instance().cfg = None


def leaves(tree: dict, prefix: str = "") -> set[str]:
    return {leaf for key, value in tree.items() for leaf in (
        leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key})}


def test_trials_rank_by_value_then_the_unfinished():
    t = [Trial(0, "COMPLETE", 5.0, {}, None), Trial(1, "FAIL", None, {}, None),
         Trial(2, "COMPLETE", 4.0, {}, None), Trial(3, "RUNNING", None, {}, None),
         Trial(4, "COMPLETE", 4.0, {}, None)]
    assert [x.number for x in ranked(t)] == [2, 4, 0, 1, 3]


def check(tmp_path, arguments, extra=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True,
                      overrides=["hparams_search=optuna", f"hydra.sweep.dir={tmp_path}", *extra])
        loader = GlobalHydra.instance().config_loader()
        search = Search(cfg, loader, None, cfg.hydra.sweeper.params, 3, 1, 0, 2, "search")
        from rnnlab.sweeps.search import parse_space

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
@pytest.mark.slow
def test_bad_search_settings_name_the_parameter(tmp_path, arguments, extra, match):
    with pytest.raises(ConfigError, match=match):
        check(tmp_path, arguments, extra)


def test_a_bad_search_is_one_line_and_status_2(tmp_path, corpus_file):
    code, _, stderr = run_here(search_cmd(corpus_file, tmp_path / "s")[:-len(SPACE)]
                               + ["model.dropout=interval(0.5,0.1)"])
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith("error: hydra.sweeper.params.model.dropout=interval(0.5,0.1) is")
