"""N-gram counting, Zipf fit, the add-k LM, and scripts/corpus_stats.py run in-process."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

import rnnlab.models.ngram as ngram
from rnnlab.analysis.corpus_stats import corpus_stats
from rnnlab.models.ngram import AddKLM, NGramCounts, perplexity_table, zipf_fit

torch.set_num_threads(1)


@pytest.fixture(params=["dense", "sparse"])
def counting(request, monkeypatch):
    """Run a test with bincount (dense) codes and with rank (sparse) codes at every order."""
    if request.param == "sparse":
        monkeypatch.setattr(ngram, "DENSE_MAX", 0)
    return request.param


def naive_ppl(train, query, n, k, V):
    logp = []
    for i in range(1, len(query)):
        o = min(n, i + 1)
        ctx, w = tuple(query[i - o + 1 : i]), query[i]
        grams = [tuple(train[j : j + o]) for j in range(len(train) - o + 1)]
        num = sum(g == ctx + (w,) for g in grams)
        den = sum(g[:-1] == ctx for g in grams)
        logp.append(np.log((num + k) / (den + k * V)))
    return float(np.exp(-np.mean(logp)))


def test_counts_match_a_naive_counter(counting):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 9, 700)
    counts = NGramCounts(torch.from_numpy(ids).to(torch.uint8), max_n=4, vocab_size=9)
    assert counts.dense[0] == (counting == "dense")
    for n in range(1, 5):
        ref = Counter(tuple(int(t) for t in ids[i : i + n]) for i in range(len(ids) - n + 1))
        got = {counts.decode(n, c): int(k) for c, k in zip(counts.codes[n - 1],
                                                          counts.counts[n - 1], strict=True)}
        assert got == ref
        assert counts.distinct(n) == len(ref)
        assert counts.top(n, 5) == sorted(ref.items(), key=lambda kv: (-kv[1], kv[0]))[:5]


def test_counts_reject_out_of_range_indices():
    with pytest.raises(ValueError, match="vocab_size"):
        NGramCounts(np.array([0, 1, 5]), 2, vocab_size=5)


def test_zipf_exponent_recovered_from_a_zipf_corpus():
    rng = np.random.default_rng(1)
    V = 2000
    for s in (0.8, 1.0, 1.3):
        p = np.arange(1, V + 1, dtype=np.float64) ** -s
        ids = rng.permutation(V)[rng.choice(V, 200_000, p=p / p.sum())]
        fit = zipf_fit(NGramCounts(ids, 1, V).counts[0], rank_min=5, rank_max=300, min_count=2)
        assert abs(fit["exponent"] - s) < 0.03
        assert (fit["rank_min"], fit["rank_max"]) == (5, 300)
        assert fit["r2"] > 0.99


def test_zipf_fit_clips_rank_range_and_rejects_too_few_ranks():
    counts = np.array([100, 50, 33, 25, 1, 1, 1])
    fit = zipf_fit(counts, rank_min=1, rank_max=100, min_count=2)
    assert fit["rank_max"] == 4 and fit["exponent"] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="at least 2 ranks"):
        zipf_fit(counts, rank_min=4, min_count=2)


@pytest.mark.parametrize("k", [1.0, 0.1, 0.003])
def test_addk_probabilities_sum_to_one_for_any_context(counting, k):
    rng = np.random.default_rng(2)
    V = 12
    train = rng.integers(1, V - 2, 400)  # ids 0 (<unk>), V-2 and V-1 never occur
    counts = NGramCounts(train, 4, V)
    contexts = [[], [3], train[:3], train[50:54], [0, 0, 0], [V - 1, 3, 4], [2, V - 2]]
    for n in range(1, 5):
        lm = AddKLM(counts, n, k)
        for ctx in contexts:
            p = lm.probs(ctx)
            assert p.shape == (V,) and (p > 0).all()
            assert p.sum() == pytest.approx(1.0, abs=1e-12)
        # an unseen context gets the uniform distribution
        if n > 1:
            assert np.allclose(lm.probs([0] * (n - 1)), 1 / V)


def test_addk_perplexity_and_probs_match_the_formula(counting):
    rng = np.random.default_rng(3)
    V = 6
    train, query = rng.integers(1, V, 300), rng.integers(0, V, 60)
    counts = NGramCounts(train, 3, V)
    for n in (1, 2, 3):
        for k in (1.0, 0.05):
            lm = AddKLM(counts, n, k)
            assert lm.perplexity(query) == pytest.approx(naive_ppl(train, query, n, k, V),
                                                         rel=1e-10)
    table = perplexity_table(counts, {"val": query}, [1, 3], [1.0, 0.05])
    assert [(r["n"], r["k"]) for r in table] == [(1, 1.0), (1, 0.05), (3, 1.0), (3, 0.05)]
    assert table[3]["val_ppl"] == pytest.approx(naive_ppl(train, query, 3, 0.05, V), rel=1e-10)


@pytest.mark.parametrize("k", [1.0, 0.01])
def test_unigram_perplexity_of_a_uniform_corpus_is_the_vocabulary_size(counting, k):
    rng = np.random.default_rng(4)
    V = 37
    uniform = np.concatenate([rng.permutation(V) for _ in range(20)])  # each id 20 times
    held_out = np.concatenate([rng.permutation(V) for _ in range(3)])
    lm = AddKLM(NGramCounts(uniform, 1, V), 1, k)
    assert lm.perplexity(held_out) == pytest.approx(V, rel=1e-12)
    assert np.allclose(lm.probs(), 1 / V)


def test_addk_rejects_bad_n_and_k():
    counts = NGramCounts(np.arange(5), 2, 5)
    with pytest.raises(ValueError, match="k=0"):
        AddKLM(counts, 1, 0.0)
    with pytest.raises(ValueError, match="n=3"):
        AddKLM(counts, 3, 1.0)



def test_corpus_stats_script_on_a_cyclic_word_corpus(tmp_path, compose_run):
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
             "juliet"]
    corpus = tmp_path / "cycle.txt"
    corpus.write_text(" ".join(words * 100) + "\n")  # 1000 tokens: train = 90 whole cycles
    out = tmp_path / "run"
    cfg = compose_run("stats", [f"data.path={corpus}", "data.batch_size=4", "data.num_steps=5",
                                "zipf.rank_min=1", "ngram.orders=[1,2,3]",
                                "ngram.ks=[1.0,0.000001]"])
    assert cfg.paths.output_dir == str(out)
    best_val = corpus_stats(cfg)
    result = json.loads((out / "ngram.json").read_text())
    assert result["token"] == "word" and result["vocab_size"] == 11  # 10 words + <unk>
    # what a report compares with its runs' data before it shows this baseline beside them
    assert result["path"] == str(corpus) and result["max_tokens"] is None
    assert result["splits"] == [0.9, 0.05, 0.05] and result["min_freq"] == 0
    assert result["split_tokens"] == {"train": 900, "val": 50, "test": 50}
    assert result["distinct"]["1"] == 10 and result["distinct"]["2"] == 10
    rows = {(r["n"], r["k"]): r for r in result["table"]}
    # uniform unigrams: perplexity = the 10 words (k -> 0); the cycle is deterministic: n >= 2 -> 1
    assert rows[1, 0.000001]["val_ppl"] == pytest.approx(10, rel=1e-5)
    assert rows[1, 0.000001]["test_ppl"] == pytest.approx(10, rel=1e-5)
    assert rows[3, 0.000001]["val_ppl"] == pytest.approx(1, rel=1e-4)
    assert rows[1, 1.0]["val_ppl"] == pytest.approx((900 + 11) / (90 + 1), rel=1e-12)
    assert result["best"]["val_ppl"] == best_val == min(r["val_ppl"] for r in result["table"])
    assert result["best"]["n"] >= 2 and "test_ppl" in result["best"]
    assert result["zipf"]["1"]["exponent"] == pytest.approx(0, abs=1e-9)  # all counts equal
    report = (out / "report.md").read_text()
    assert "alpha bravo charlie" in report and "Baseline" in report
    for png in ("zipf.png", "ngram_ppl.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
