"""A user's own runs: resume from the checkpoint alone, what the run says about its data and
how to go on, a sample prefix taken from the corpus (tiny corpora, 1-2 epochs)."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, make_cfg
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from rnnlab.errors import ConfigError
from rnnlab.text.vocab import encode_corpus, preprocess
from rnnlab.training.run import data_line, dense_one_hot, train
from rnnlab.training.samples import BOOK_PREFIX, corpus_prefix


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def alone(tmp_path: Path, last: Path, *overrides: str):
    """The config of `train.py ckpt_path=<last> [overrides]`, composed as the command line
    composes it (make_cfg's shrinking overrides left out: they must come from the run)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True,
                      overrides=[f"ckpt_path={last}", *overrides])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "new")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.slow
def test_an_interrupted_run_says_how_to_resume_and_its_checkpoint_alone_resumes_it_exactly(
        tmp_path, corpus_file, caplog):
    common = ["model=gru", "data.sampling=random", "trainer.max_epochs=2", "test=false",
              "seed=3", "model.dropout=0.1"]
    expected = train(make_cfg(tmp_path / "a", corpus_file, common))
    straight = summary(tmp_path / "a" / "run")
    cut = make_cfg(tmp_path / "b", corpus_file, [*common, "+callbacks.stop.step=100",
                                                  "+callbacks.stop._target_=conftest.SignalAtStep"])
    with pytest.raises(SystemExit):
        train(cut)
    run_dir = tmp_path / "b" / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert summary(run_dir)["status"] == "interrupted"
    assert f"resume it with: python scripts/train.py ckpt_path={last}" in caplog.text
    # the command it printed: nothing but ckpt_path, every other setting from the run
    caplog.set_level(logging.INFO)
    got = train(alone(tmp_path, last))
    assert "resuming with the run's own settings for " in caplog.text
    resumed = summary(run_dir)
    assert resumed["status"] == "finished" and resumed["model"] == "gru"
    assert resumed["data"]["path"] == str(corpus_file)
    assert resumed["global_step"] == straight["global_step"]
    assert got == pytest.approx(expected, rel=1e-6)
    assert resumed["final_val_ppl"] == pytest.approx(straight["final_val_ppl"], rel=1e-6)


@pytest.mark.slow
def test_a_resume_that_changes_the_model_is_refused_listing_what_differs(tmp_path, corpus_file):
    cfg = make_cfg(tmp_path / "a", corpus_file, ["test=false"])
    train(cfg)
    run_dir = tmp_path / "a" / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    kept = {name: (run_dir / name).read_text() for name in ("summary.json", "config.yaml")}
    with pytest.raises(ConfigError) as info:
        train(alone(tmp_path, last, "model.core.num_hiddens=24", "data.batch_size=8",
                    "trainer.max_epochs=2"))
    message = str(info.value)
    assert "data.batch_size: 4 in the run, 8 now" in message
    assert "model.core.num_hiddens: 16 in the run, 24 now" in message
    assert "trainer.max_epochs" not in message.split("A resume may")[0]  # that one may change
    assert "\n" not in message
    assert {name: (run_dir / name).read_text() for name in kept} == kept


@pytest.mark.slow
def test_the_run_says_what_data_it_is_on(cfg_factory, corpus_file, caplog):
    caplog.set_level(logging.INFO)
    cfg = cfg_factory("test=false")
    train(cfg)
    data = summary(Path(cfg.paths.output_dir))["data"]
    text = preprocess(corpus_file.read_text(), "letters")
    assert data["vocab_size"] == len(set(text)) + 1 and sum(data["tokens"].values()) == len(text)
    assert data["oov_rate"] == {"train": 0.0, "val": 0.0, "test": 0.0}
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert line == data_line(data) and f"{data['tokens']['train']:,}/" in line
    assert f"vocabulary {len(set(text)) + 1}," in line
    assert "out of vocabulary 0.00%/0.00%/0.00%" in line
    # the corpus holds the book's prefix, so the samples start from it
    assert f"sample prefix {BOOK_PREFIX!r}" in caplog.text


def test_word_tokens_with_one_hot_inputs_are_pointed_at_an_embedding():
    data = {"path": "x.txt", "preprocess": "letters", "token": "word", "vocab_size": 5000,
            "tokens": {"train": 9, "val": 1, "test": 1},
            "oov_rate": {"train": 0.0, "val": 0.015, "test": 0.02}}
    assert "model.embedding_dim=128" in data_line(data, dense_one_hot=True)
    assert "out of vocabulary 0.00%/1.50%/2.00%" in data_line(data)
    assert "embedding_dim" not in data_line(data, dense_one_hot=False)
    assert "embedding_dim" not in data_line({**data, "token": "char", "vocab_size": 28}, True)
    lstm = OmegaConf.create({"embedding_dim": None, "core": {"kind": "lstm"}})
    assert dense_one_hot(lstm) and not dense_one_hot(OmegaConf.merge(lstm, {"embedding_dim": 8}))
    # the scratch RNN looks its one-hot rows up: an embedding would not make it faster
    assert not dense_one_hot(OmegaConf.create({"embedding_dim": None, "core": {"fast": True}}))


@pytest.mark.parametrize("raw, mode, token, prefix", [
    ("Call me Ishmael. The time traveller said so.", "letters", "char", BOOK_PREFIX),
    ("Call me Ishmael. Some years ago, never mind.", "letters", "char", "call me ishmael"),
    ("Машина времени и путешественник. " * 3, "unicode_letters", "char", "машина времени и"),
    ("Машина времени и путешественник. " * 3, "unicode_letters", "word", "машина времени и"),
])
def test_the_sample_prefix_comes_from_the_corpus(raw, mode, token, prefix):
    text = preprocess(raw, mode)
    ids, vocab = encode_corpus(text, token)
    model = SimpleNamespace(vocab=vocab, token=token, preprocess=mode)
    assert corpus_prefix(ids, model) == prefix
