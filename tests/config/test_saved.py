"""Run dirs, checkpoints and sweep dirs written before the subpackages still work: the fixture
`tests/fixtures/legacy_sweep` is a 2-job sweep (rnn_scratch, lstm; 16 units, 2 epochs) made by
the flat-package code of 2026-12-03 (commit a9e4aa0), its saved configs naming `rnnlab.lm`,
`rnnlab.cores`, `rnnlab.data` and so on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_script
from hydra._internal.utils import _locate

from rnnlab.config.saved import MOVED, flatten, upgrade_targets

FIXTURE = ROOT / "tests" / "fixtures" / "legacy_sweep"
WHERE = "/work/before/legacy/sweep"  # the paths the fixture was written with
CORPUS = "/work/before/tiny.txt"


def test_old_targets_are_renamed_to_importable_ones_and_others_kept():
    old = {"_target_": "rnnlab.lm.LanguageModel", "lr": 1.0,
           "core": {"_target_": "rnnlab.cores.TorchRNN", "_partial_": True},
           "callbacks": [{"_target_": "rnnlab.callbacks.SampleText"},
                         {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint"},
                         {"_target_": "pytorch_lightning.callbacks.LearningRateMonitor"}],
           "series": {"_target_": "rnnlab.forecast.LagMLP"}}
    new = upgrade_targets(old)
    assert new["_target_"] == "rnnlab.models.lm.LanguageModel" and new["lr"] == 1.0
    assert new["core"] == {"_target_": "rnnlab.models.cores.TorchRNN", "_partial_": True}
    assert [c["_target_"] for c in new["callbacks"]] == [
        "rnnlab.training.samples.SampleText", "rnnlab.training.checkpoints.MovableCheckpoint",
        "pytorch_lightning.callbacks.LearningRateMonitor"]  # a class renamed, not its module
    assert new["series"]["_target_"] == "rnnlab.forecast.series.LagMLP"
    assert upgrade_targets(new) == new  # new names are left alone
    assert old["_target_"] == "rnnlab.lm.LanguageModel"  # the input is not changed


def test_every_target_in_the_fixture_resolves_after_upgrade():
    config = yaml.safe_load((FIXTURE / "1_model=lstm" / "config.yaml").read_text())
    targets = [v for k, v in flatten(upgrade_targets(config)).items() if k.endswith("_target_")]
    assert any(t.startswith("rnnlab.models.") for t in targets)
    for target in targets:
        assert _locate(target) is not None, target
    assert all(_locate(new + ".__name__") for new in MOVED.values())


def test_flatten_lists_and_empty_nodes():
    assert flatten({"a": {"b": [1, 2], "c": {}}, "d": None}) == {
        "a.b.0": 1, "a.b.1": 2, "a.c": {}, "d": None}
    assert flatten({"a": {"b": [1, 2]}}, lists=False) == {"a.b": [1, 2]}


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """The fixture copied to tmp_path, its absolute paths pointing there."""
    sweep = tmp_path / "sweep"
    shutil.copytree(FIXTURE, sweep, ignore=shutil.ignore_patterns("corpus.txt"))
    corpus = tmp_path / "tiny.txt"
    shutil.copy(FIXTURE / "corpus.txt", corpus)
    for path in sweep.rglob("*"):
        if path.suffix in (".yaml", ".json", ".log"):
            path.write_text(path.read_text().replace(WHERE, str(sweep))
                            .replace(CORPUS, str(corpus)))
    return sweep


def test_an_old_checkpoint_generates_text(legacy):
    from rnnlab.models.generate import generate, load_checkpoint

    for job in ("0_model=rnn_scratch", "1_model=lstm"):
        model = load_checkpoint(legacy / job / "checkpoints" / "last.ckpt")
        text = generate(model, "time traveller", 20)
        assert text.startswith("time traveller") and len(text) == len("time traveller") + 20


@pytest.mark.slow
def test_an_old_sweep_dir_gets_a_report(legacy):
    from rnnlab.analysis.report import write_report

    markdown, written = write_report([legacy])
    report = json.loads((legacy / "report.json").read_text())
    assert report["swept_keys"] == ["model"]
    best = {row["config"]["model"]: row["best_val_ppl"]["mean"] for row in report["rows"]}
    for job in ("0_model=rnn_scratch", "1_model=lstm"):
        summary = json.loads((legacy / job / "summary.json").read_text())
        assert best[summary["model"]] == pytest.approx(summary["best_val_ppl"])
    assert (legacy / "val_ppl.png") in written and "rnn_scratch" in markdown


@pytest.mark.slow
def test_an_old_sweep_relaunches_and_resumes_its_killed_job(legacy):
    """The same command again: the finished job is kept; a job marked killed resumes from its
    old last.ckpt and trains on to a larger budget only when asked, so here: one epoch more
    would change the config, hence the killed job finishes its own 2 epochs."""
    lstm = legacy / "1_model=lstm"
    summary = json.loads((lstm / "summary.json").read_text())
    summary["status"] = "running"  # as if killed after its last checkpoint
    (lstm / "summary.json").write_text(json.dumps(summary))
    overrides = yaml.safe_load((lstm / ".hydra" / "overrides.yaml").read_text())
    proc = run_script("scripts/train.py", "--multirun",
                      *[o for o in overrides if not o.startswith("model=")],
                      "model=rnn_scratch,lstm", f"hydra.sweep.dir={legacy}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    scratch = json.loads((legacy / "0_model=rnn_scratch" / "summary.json").read_text())
    assert scratch["status"] == "finished" and "not trained again" in proc.stderr + proc.stdout \
        or scratch["wall_time_s"] == json.loads(
            (FIXTURE / "0_model=rnn_scratch" / "summary.json").read_text())["wall_time_s"]
    resumed = json.loads((lstm / "summary.json").read_text())
    assert resumed["status"] == "finished" and resumed["epochs"] == 2
    assert resumed["test_ppl"] == pytest.approx(summary["test_ppl"], rel=1e-6)
