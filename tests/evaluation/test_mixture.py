"""The Kneser-Ney n-gram and its log-linear mixture with an RNN (the `best` experiment's model)."""

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.errors import ConfigError
from rnnlab.evaluation.heldout import stream_log_probs
from rnnlab.evaluation.mixture import evaluate_mixture
from rnnlab.models.cores import TorchRNN
from rnnlab.models.kneser_ney import KneserNeyLM
from rnnlab.models.lm import LanguageModel
from rnnlab.models.perplexity import HeldOutScore
from rnnlab.training.run import train


def test_unigram_discounting_by_hand():
    # counts {0: 2, 1: 1}; counts of counts too sparse -> D = 0.75; gamma = 0.75 * 2 / 3
    lm = KneserNeyLM([0, 0, 1], order=1, vocab_size=3)
    np.testing.assert_allclose(lm.probs(), [1.75 / 3, 0.75 / 3, 0.5 / 3])


def test_bigram_backs_off_to_continuation_counts_by_hand():
    lm = KneserNeyLM([0, 1, 2, 1], order=2, vocab_size=3)
    # continuation counts: 1 follows two distinct tokens, 2 follows one -> {1: 2, 2: 1}
    lower = np.array([0.5 / 3, 1.75 / 3, 0.75 / 3])
    np.testing.assert_allclose(lm.probs([]), lower)
    # after 1 only 2 was seen (count 1): 0.25 / 1 for it, gamma = 0.75 on the lower order
    np.testing.assert_allclose(lm.probs([1]), 0.75 * lower + [0, 0, 0.25])
    np.testing.assert_allclose(lm.probs([0, 2]), lm.probs([2]))  # order 2 reads one token


def test_distributions_sum_to_one_and_stream_scores_every_position():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, 500)
    lm = KneserNeyLM(ids, order=4, vocab_size=7)  # token 6 never occurs
    for ctx in ([], [1], [1, 2, 3], [6, 6, 6], [5, 4, 3, 2, 1]):
        p = lm.probs(ctx)
        assert p.min() > 0 and abs(p.sum() - 1) < 1e-12
    P = lm.stream_probs(ids[:50])
    assert P.shape == (49, 7)
    np.testing.assert_allclose(P[0], lm.probs(ids[:1]))
    np.testing.assert_allclose(P[10], lm.probs(ids[8:11]))
    with pytest.raises(ValueError, match="order=0"):
        KneserNeyLM(ids, order=0, vocab_size=7)
    with pytest.raises(ValueError, match="vocab_size=3"):
        KneserNeyLM(ids, order=2, vocab_size=3)


def test_a_higher_order_fits_text_that_needs_longer_contexts():
    text = [0, 1]
    while len(text) < 300:  # each token is fixed by the two before it, not by one
        text.append((text[-1] + text[-2]) % 4)
    ppl = [KneserNeyLM(text, order=n, vocab_size=4).perplexity(text) for n in (1, 2, 3)]
    assert ppl[0] > ppl[1] > ppl[2] and ppl[2] < 1.1


def tiny_model() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(core=partial(TorchRNN, "gru", num_hiddens=12), vocab_size=5,
                         optimizer=partial(torch.optim.SGD, lr=1.0))


def test_streaming_in_chunks_carries_the_state():
    model, ids = tiny_model(), torch.randint(0, 5, (60,))
    torch.testing.assert_close(stream_log_probs(model, ids, chunk=7),
                               stream_log_probs(model, ids, chunk=1000))


def test_mixture_weight_is_chosen_on_validation():
    # val repeats the training pattern (the n-gram is right), test is noise (the n-gram is
    # confidently wrong, the untrained RNN's near-uniform guess is better): the two splits
    # want opposite weights, so a weight chosen on test would show
    torch.manual_seed(1)
    pattern = torch.tensor([0, 1, 2, 3, 4, 4, 3, 2, 1])
    corpus = {"train": pattern.repeat(45), "val": pattern.repeat(9),
              "test": torch.randint(0, 5, (80,))}
    r = evaluate_mixture(tiny_model(), corpus, vocab_size=5, order=3)
    assert 0 <= r["mix_weight"] < 0.5
    # a = 0 and a = 1 (the n-gram, the RNN alone) are on the grid: the pick is at least as good
    assert r["val/ppl_mix"] <= min(r["val/ppl_ngram"], r["val/ppl_stream"]) + 1e-12
    assert r["test/ppl_mix"] > r["test/ppl_stream"]  # not the best weight for test
    assert all(math.isfinite(r[f"test/ppl_{k}"]) for k in ("mix", "ngram", "stream"))
    with pytest.raises(ValueError, match="validation split"):
        evaluate_mixture(tiny_model(), {"train": corpus["train"]}, vocab_size=5)


@pytest.mark.slow
def test_training_job_reports_the_mixture(cfg_factory):
    cfg = cfg_factory("model=gru", "trainer.max_epochs=2", "+ngram_mix.order=4")
    got = train(cfg)
    s = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert got == s["val_ppl_mix"] and 0 <= s["mix_weight"] <= 1
    assert s["val_ppl_mix"] <= min(s["val_ppl_ngram"], s["val_ppl_stream"]) + 1e-12
    # the RNN half reads val as one stream, as evaluation with eval_batch_size=1 does
    assert s["val_ppl_stream"] == pytest.approx(s["best_val_ppl"], rel=1e-4)
    assert s["test_ppl_stream"] == pytest.approx(s["test_ppl"], rel=1e-4)
    with pytest.raises(ConfigError, match="ngram_mix.order=0"):
        train(cfg_factory("+ngram_mix.order=0"))


def test_mixture_settings_are_checked_before_training(cfg_factory):
    with pytest.raises(ConfigError, match="test=true"):
        train(cfg_factory("+ngram_mix.order=3", "test=false"))
    with pytest.raises(ConfigError, match="validation split"):
        train(cfg_factory("+ngram_mix.order=3", "data.splits=[0.9,0,0.1]"))


def test_held_out_sums_keep_every_token_in_float64():
    score = HeldOutScore()
    score.add(torch.tensor(1.0), 2**25)  # float32 holds integers exactly only up to 2**24
    score.add(torch.tensor(1.0), 1)
    assert float(score.loss_sum) == 2**25 + 1 and score.tokens == 2**25 + 1
    assert float(score.perplexity()) == pytest.approx(math.e)
