"""Dynamic evaluation: causal, leaves the trained model alone, deterministic, and it helps."""

import json
import logging
import re
from functools import partial
from pathlib import Path

import pytest
import torch

from rnnlab.errors import ConfigError
from rnnlab.evaluation.dynamic import dynamic_log_probs, evaluate_dynamic
from rnnlab.evaluation.heldout import stream_log_probs
from rnnlab.models.cores import ScratchRNN, TorchRNN
from rnnlab.models.lm import LanguageModel
from rnnlab.models.perplexity import token_ppl
from rnnlab.training.run import train

V = 6


def model_of(core) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(core=core, vocab_size=V, optimizer=partial(torch.optim.SGD, lr=1.0),
                         embedding_dim=8)


CORES = [partial(ScratchRNN, num_hiddens=16), partial(TorchRNN, "lstm", num_hiddens=16)]


@pytest.mark.parametrize("core", CORES)
def test_no_token_is_scored_after_the_model_learned_from_it(core):
    model = model_of(core)
    ids = torch.randint(0, V, (60,), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    p = 37  # inside the third 16-token window
    changed[p] = (ids[p] + 1) % V
    a = dynamic_log_probs(model, ids, lr=0.5, window=16)
    b = dynamic_log_probs(model, changed, lr=0.5, window=16)
    # row i predicts ids[i+1] from ids[:i+1]: rows before p cannot have seen the change; an
    # update on a window before scoring it would leak ids[p] into rows 32..36
    assert torch.equal(a[:p], b[:p])
    assert not torch.equal(a[p:], b[p:])


def test_trained_weights_stay_and_results_are_deterministic():
    model = model_of(CORES[1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, V, (50,))
    first = dynamic_log_probs(model, ids, lr=0.3, decay=0.1, window=8)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(first, dynamic_log_probs(model, ids, lr=0.3, decay=0.1, window=8))


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("normalize", [False, True])
def test_learning_rate_zero_scores_as_the_static_model_and_decay_one_keeps_its_weights(
        core, normalize):
    model = model_of(core)
    ids = torch.randint(0, V, (90,), generator=torch.Generator().manual_seed(4))
    static = stream_log_probs(model, ids)
    frozen = dynamic_log_probs(model, ids, lr=0.0, window=16, normalize=normalize)
    assert frozen.shape == static.shape
    torch.testing.assert_close(frozen, static, rtol=1e-5, atol=1e-6)
    # a large step, then pulled all the way back before the next window: the trained weights
    # score every window, as with lr 0
    pulled_back = dynamic_log_probs(model, ids, lr=0.5, decay=1.0, window=16,
                                    normalize=normalize)
    assert torch.equal(pulled_back, frozen)
    moved = dynamic_log_probs(model, ids, lr=0.5, decay=0.0, window=16, normalize=normalize)
    assert not torch.allclose(moved[16:], frozen[16:])  # the step itself does change scores


def test_a_setting_whose_val_ppl_is_not_finite_never_wins():
    model = model_of(CORES[0])
    gen = torch.Generator().manual_seed(5)
    corpus = {"val": torch.randint(0, V, (120,), generator=gen),
              "test": torch.randint(0, V, (120,), generator=gen)}
    # SGD at lr 1e30 overflows to NaN/inf weights after the first window
    assert not torch.isfinite(torch.tensor(token_ppl(
        dynamic_log_probs(model, corpus["val"], 1e30, 0.0, 20, False), corpus["val"])))
    result, log_probs = evaluate_dynamic(model, corpus, lr=[1e30, 1e-3], window=20,
                                         normalize=False)
    assert result["dyn_lr"] == 1e-3 and torch.isfinite(torch.tensor(result["val/ppl_dyn"]))
    none, nothing = evaluate_dynamic(model, corpus, lr=[1e30], window=20, normalize=False)
    assert nothing is None and none["dyn_lr"] is None and "test/ppl_dyn" not in none


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("normalize, lr", [(False, 1.0), (True, 0.03)])
def test_on_a_repeated_text_dynamic_evaluation_beats_static(core, normalize, lr):
    model = model_of(core)
    ids = torch.randint(0, V, (10,), generator=torch.Generator().manual_seed(2)).repeat(20)
    static = token_ppl(stream_log_probs(model, ids), ids)
    dynamic = token_ppl(dynamic_log_probs(model, ids, lr=lr, window=20, normalize=normalize), ids)
    assert dynamic < 0.8 * static


def test_the_learning_rate_is_chosen_on_validation_and_test_scored_once():
    model = model_of(CORES[0])
    gen = torch.Generator().manual_seed(3)
    corpus = {"val": torch.randint(0, V, (30,), generator=gen).repeat(6),  # rewards adapting
              "test": torch.randint(0, V, (180,), generator=gen)}  # noise: adapting hurts
    result, log_probs = evaluate_dynamic(model, corpus, lr=[1e-4, 0.5], window=20,
                                         normalize=False)
    assert result["dyn_lr"] == 0.5 and result["dyn_decay"] == 0.0
    assert result["test/ppl_dyn"] == token_ppl(log_probs["test"], corpus["test"])
    small = token_ppl(dynamic_log_probs(model, corpus["test"], 1e-4, 0.0, 20, False),
                      corpus["test"])
    assert small < result["test/ppl_dyn"]  # test would have picked the other one


@pytest.mark.slow
def test_training_job_reports_dynamic_evaluation_and_its_mixture(cfg_factory, caplog):
    caplog.set_level(logging.INFO, logger="rnnlab.evaluation.dynamic")
    cfg = cfg_factory("model=gru", "trainer.max_epochs=2", "eval.dynamic=true",
                      "eval.lr=[0.01,0.1]", "eval.window=16", "+ngram_mix.order=3")
    got = train(cfg)
    s = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    for key in ("val_ppl_dyn", "test_ppl_dyn", "val_ppl_dyn_mix", "test_ppl_dyn_mix",
                "val_ppl_mix", "dyn_mix_weight"):
        assert s[key] is not None, key
    assert got == s["val_ppl_dyn_mix"]
    # the chosen rate is the one with the lowest val/ppl_dyn of those the log says were tried
    tried = {float(lr): float(ppl) for lr, ppl in re.findall(
        r"dynamic evaluation lr=(\S+) decay=\S+ window=\d+: val/ppl_dyn (\S+)",
        caplog.text)}
    assert set(tried) == {0.01, 0.1} and s["dyn_lr"] == min(tried, key=tried.get)
    assert s["val_ppl_dyn"] == pytest.approx(min(tried.values()), rel=1e-4)
    assert s["val_ppl_dyn_mix"] <= min(s["val_ppl_dyn"], s["val_ppl_ngram"]) + 1e-12


@pytest.mark.parametrize("override, match", [
    ("eval.lr=0", r"eval.lr=\[0\] must be positive numbers"),
    ("eval.decay=[0,1.5]", r"eval.decay=\[0, 1.5\] must be numbers in \[0, 1\)"),
    ("eval.window=0", "eval.window=0 must be a positive integer"),
    ("test=false", "eval.dynamic scores the tested"),
])
def test_dynamic_evaluation_settings_are_checked_before_training(cfg_factory, override, match):
    with pytest.raises(ConfigError, match=match):
        train(cfg_factory("eval.dynamic=true", override))
