"""The parts that learn while they score (issue 29): the adaptive n-gram, the online mixture,
Krause et al.'s dynamic evaluation, and their wiring. Each is causal: a token's probability
never depends on itself or on later tokens; every distribution sums to 1."""

import copy
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.errors import ConfigError
from rnnlab.evaluation.adaptive_eval import evaluate_adaptive, expert_streams
from rnnlab.evaluation.adaptive_ngram import adaptive_stream_probs
from rnnlab.evaluation.dynamic_krause import (
    evaluate_krause,
    krause_log_probs,
    training_gradient_rms,
)
from rnnlab.evaluation.heldout import stream_log_probs
from rnnlab.evaluation.online_mixture import initial_weights, mixture_features, online_mixture
from rnnlab.evaluation.word_completion import WordCompletion
from rnnlab.models.cores import TorchRNN
from rnnlab.models.kneser_ney import KneserNeyLM
from rnnlab.models.lm import LanguageModel
from rnnlab.models.perplexity import token_ppl
from rnnlab.training.run import train

V = 6


def ids_of(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def changed_at(ids: torch.Tensor, p: int) -> torch.Tensor:
    out = ids.clone()
    out[p] = (ids[p] + 1) % V
    return out


def tiny_lstm() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(core=partial(TorchRNN, "lstm", num_hiddens=16), vocab_size=V,
                         optimizer=partial(torch.optim.SGD, lr=1.0), embedding_dim=8)


# ---- the adaptive n-gram ------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 23, 59])
def test_adaptive_ngram_is_causal_and_sums_to_one(p):
    kn = KneserNeyLM(ids_of(300, 0), order=4, vocab_size=V)
    ids = ids_of(60, 1)
    a, _ = adaptive_stream_probs(kn, ids)
    b, _ = adaptive_stream_probs(kn, changed_at(ids, p))
    # row i is P(. | ids[:i+1]): rows before p have not read ids[p] (row p-1 predicts it)
    np.testing.assert_array_equal(a[:p], b[:p])
    if p < 59:
        assert not np.array_equal(a[p:], b[p:])
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-12)
    assert a.min() > 0


def test_adaptive_ngram_learns_a_repeat_and_leaves_the_trained_counts_alone():
    kn = KneserNeyLM(ids_of(300, 0), order=5, vocab_size=V)
    tables = copy.deepcopy(kn.tables)
    once = ids_of(40, 2)
    ids = torch.cat([once, once, once])
    P, matched = adaptive_stream_probs(kn, ids)
    y = ids[1:].numpy()
    got = P[np.arange(len(y)), y]
    static = kn.stream_probs(ids)[np.arange(len(y)), y]
    # the second copy is read with the first one counted, the third with two
    assert got[85:].mean() > got[45:79].mean() > 2.5 * static[45:79].mean()
    np.testing.assert_array_equal(P[0], kn.probs(ids[:1]))  # nothing read yet: the static one
    assert matched[45:].min() == 5 > matched[:39].mean() and kn.tables == tables
    # the same stream again starts from the training counts: the same numbers
    np.testing.assert_array_equal(adaptive_stream_probs(kn, ids)[0], P)


def test_adaptive_ngram_adds_the_counts_kneser_ney_would_by_hand():
    kn = KneserNeyLM([0, 1], order=2, vocab_size=3)
    P, matched = adaptive_stream_probs(kn, [2, 2, 2])
    # row 0: context (2,) unseen, the unigram continuation counts {1: 1}: 0.25 on 1, 0.75 spread
    np.testing.assert_allclose(P[0], kn.probs([2]))
    assert matched.tolist() == [1, 2]
    # then (2, 2) was counted at order 2 and, being new, 2 gained a continuation at order 1
    lower = (np.array([0.0, 0.25, 0.25]) + 2 * 0.75 / 3) / 2  # {1: 1, 2: 1}, D = 0.75
    np.testing.assert_allclose(P[1], 0.25 * np.eye(3)[2] + 0.75 * lower)


# ---- the online mixture -------------------------------------------------------------------------
def random_experts(L: int, K: int = 3, seed: int = 0) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(K, L, V)) * 2
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("t", [0, 17, 39])
def test_online_mixture_row_t_never_reads_target_t_or_later(t):
    E, y = random_experts(40), np.asarray(ids_of(40, 3))
    F = np.random.default_rng(1).random((40, 4))
    W0 = initial_weights(3, 4)
    a, _ = online_mixture(E, F, y, W0, lr=0.5)
    y2 = y.copy()
    y2[t] = (y[t] + 1) % V
    b, _ = online_mixture(E, F, y2, W0, lr=0.5)
    np.testing.assert_array_equal(a[: t + 1], b[: t + 1])  # row t is recorded before it learns
    if t < 39:
        assert not np.array_equal(a[t + 1:], b[t + 1:])
    np.testing.assert_allclose(np.exp(a).sum(1), 1.0, atol=1e-12)


def test_online_mixture_learns_to_trust_the_expert_that_is_right():
    y = np.asarray(ids_of(400, 4))
    right = np.full((400, V), np.log(0.05 / (V - 1)))
    right[np.arange(400), y] = np.log(0.95)
    E = np.stack([random_experts(400, K=1)[0], right])
    F = np.ones((400, 1))
    W0 = initial_weights(2, 1)
    fixed, _ = online_mixture(E, F, y, W0, lr=0.0)
    learned, W = online_mixture(E, F, y, W0, lr=0.1)
    nll = lambda lp: -lp[np.arange(400), y].mean()  # noqa: E731
    assert nll(learned) < 0.5 * nll(fixed) and W[1, 0] > W[0, 0]
    np.testing.assert_allclose(fixed, (E[0] + E[1]) / 2 - np.log(
        np.exp((E[0] + E[1]) / 2).sum(-1, keepdims=True)))  # lr 0: the geometric mean
    with pytest.raises(ValueError, match="shapes do not fit"):
        online_mixture(E, F[:10], y, W0, lr=0.1)


def test_mixture_features_say_how_sure_and_how_much_context():
    sure = np.log(np.eye(V)[[0, 1]] * 0.99 + 0.01 / V)
    uniform = np.full((2, V), -np.log(V))
    f = mixture_features(sure, uniform, np.array([1, 3]), order=3, last=np.array([4, 0]))
    assert f.shape == (2, 6 + V) and (f[:, 0] == 1).all()
    assert f[0, 1] < 0.1 and f[0, 2] == pytest.approx(1.0)
    np.testing.assert_array_equal(f[:, 3:6], [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(f[:, 6:].argmax(1), [4, 0])


# ---- Krause et al.'s dynamic evaluation ----------------------------------------------------------
def test_krause_dynamic_evaluation_is_causal_and_leaves_the_model_alone():
    model = tiny_lstm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ms = training_gradient_rms(model, ids_of(400, 5), window=16, rows=4, batches=2)
    assert len(ms) == len(list(model.parameters())) and all((m >= 0).all() for m in ms)
    ids, p = ids_of(60, 6), 37
    a = krause_log_probs(model, ids, ms, lr=0.01, decay=0.1, window=16)
    b = krause_log_probs(model, changed_at(ids, p), ms, lr=0.01, decay=0.1, window=16)
    assert torch.equal(a[:p], b[:p]) and not torch.equal(a[p:], b[p:])
    torch.testing.assert_close(a.exp().sum(1), torch.ones(len(a)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(a, krause_log_probs(model, ids, ms, lr=0.01, decay=0.1, window=16))


def test_krause_dynamic_evaluation_learns_a_repeat_and_chooses_on_val():
    model = tiny_lstm()
    corpus = {"train": ids_of(400, 7), "val": ids_of(10, 8).repeat(20), "test": ids_of(200, 9)}
    static = token_ppl(stream_log_probs(model, corpus["val"]), corpus["val"])
    result, log_probs = evaluate_krause(model, corpus, lr=[1e-6, 0.001], decay=[0.0], window=20)
    assert result["krause_lr"] == 0.001 and result["val/ppl_krause"] < 0.8 * static
    assert result["test/ppl_krause"] == token_ppl(log_probs["test"], corpus["test"])


# ---- the wiring ---------------------------------------------------------------------------------
def test_every_expert_and_feature_row_is_causal():
    model, kn = tiny_lstm(), KneserNeyLM(ids_of(300, 13), order=3, vocab_size=V)
    ids, p = ids_of(50, 14), 30
    dyn = krause_log_probs(model, ids, [torch.ones_like(q) for q in model.parameters()], 0.01)
    words = WordCompletion(ids_of(300, 13), separator=0, vocab_size=V)
    E, F, names = expert_streams(model, ids, kn, dyn, words)
    changed = changed_at(ids, p)
    E2, F2, _ = expert_streams(model, changed, kn, krause_log_probs(
        model, changed, [torch.ones_like(q) for q in model.parameters()], 0.01), words)
    assert names == ["lstm", "lstm_dynamic", "ngram", "ngram_adaptive", "words"]
    assert E.shape == (5, 49, V) and F.shape[0] == 49
    np.testing.assert_array_equal(E[:, :p], E2[:, :p])
    np.testing.assert_array_equal(F[:p], F2[:p])
    assert not np.array_equal(E[:, p:], E2[:, p:]) and not np.array_equal(F[p:], F2[p:])
    np.testing.assert_allclose(np.exp(E).sum(-1), 1.0, atol=1e-6)


def test_adaptive_evaluation_chooses_on_val_and_test_changes_nothing_chosen():
    model = tiny_lstm()
    pattern = ids_of(12, 10)
    corpus = {"train": ids_of(300, 11), "val": pattern.repeat(10), "test": pattern.repeat(8)}
    r = evaluate_adaptive(model, corpus, vocab_size=V, order=4)
    # the val text repeats a pattern the training text lacks: counting it while reading pays
    assert r["val/ppl_ngram_adaptive"] < 0.5 * KneserNeyLM(corpus["train"], 4, V).perplexity(
        corpus["val"])
    assert r["val/ppl_online"] <= r["val/ppl_adapt_mix"] * 1.05
    other = dict(corpus, test=ids_of(96, 12))
    r2 = evaluate_adaptive(model, other, vocab_size=V, order=4)
    for key in ("online_lr", "online_experts", "adapt_mix_weight", "val/ppl_online",
                "val/ppl_adapt_mix"):
        assert r2[key] == r[key], key
    assert r2["test/ppl_online"] != r["test/ppl_online"]


@pytest.mark.slow
def test_training_job_reports_every_adaptive_part(cfg_factory):
    cfg = cfg_factory("model=lstm", "trainer.max_epochs=1", "eval.dynamic=true",
                      "eval.lr=[0.001]", "eval.window=16", "eval.krause=true",
                      "eval.krause_lr=[0.0001]", "+ngram_mix.order=3", "+ngram_mix.online=true",
                      "+ngram_mix.words=2")
    got = train(cfg)
    s = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    for key in ("val_ppl_krause", "test_ppl_krause", "val_ppl_online", "test_ppl_online",
                "val_ppl_ngram_adaptive", "val_ppl_adapt_mix", "online_lr", "val_ppl_words",
                "test_ppl_words"):
        assert s[key] is not None, key
    assert s["dyn_rule"] in ("rms", "krause") and got == s["val_ppl_online"]


@pytest.mark.parametrize("override, match", [
    ("+ngram_mix.online=yes", "ngram_mix.online=yes must be true or false"),
    ("eval.krause_lr=[0]", r"eval.krause_lr=\[0\] must be positive numbers"),
    ("eval.krause_decay=[2]", r"eval.krause_decay=\[2\] must be numbers in \[0, 1\)"),
])
def test_adaptive_settings_are_checked_before_training(cfg_factory, override, match):
    with pytest.raises(ConfigError, match=match):
        train(cfg_factory("eval.dynamic=true", "eval.krause=true", "+ngram_mix.order=3",
                          override))


def test_an_old_sweep_without_the_new_keys_is_the_same_experiment_at_their_defaults():
    from rnnlab.training.relaunch import config_differences, without_ignored

    old = {"eval": {"dynamic": True, "lr": [0.001]}}
    new = {"eval": {"dynamic": True, "lr": [0.001], "krause": False, "krause_lr": [0.0001],
                    "krause_decay": [0.0]}}
    assert config_differences(without_ignored(old), without_ignored(new)) == []
    on = {"eval": {"dynamic": True, "lr": [0.001], "krause": True}}
    assert config_differences(without_ignored(old), without_ignored(on)) == \
        ["eval.krause: (absent) there, True now"]
