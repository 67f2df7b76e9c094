"""The peer comparison's machinery (benchmarks/peers.py, peer_examples.py, epoch_profile.py);
timings are never asserted here: they live in the benchmarks' output and docs/performance.md."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from conftest import ROOT, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))
from epoch_profile import callback_clock, parse, summarise  # noqa: E402
from peers import per_epoch_rate  # noqa: E402

REPORT = """
|  Action  |  Mean duration (s)  |  Num calls  |  Total time (s)  |  Percentage %  |
|  Total  |  -  |  100  |  12.0  |  100 %  |
|  run_training_epoch  |  5.0  |  2  |  10.0  |  80  |
|  run_training_batch  |  0.05  |  160  |  8.0  |  60  |
|  [Strategy]SingleDeviceStrategy.validation_step  |  0.1  |  10  |  1.0  |  8  |
|  [LightningModule]LanguageModel.on_validation_epoch_end  |  0.1  |  2  |  0.2  |  1  |
|  [Callback]MovableCheckpoint{'monitor': None}.on_validation_end  |  0.1  |  2  |  0.2  |  1  |
|  [Callback]GradientsThroughTime.on_train_start  |  0.3  |  1  |  0.3  |  2  |
|  [Callback]GradientsThroughTime.on_train_end  |  0.2  |  1  |  0.2  |  2  |
|  [Strategy]SingleDeviceStrategy.test_step  |  0.1  |  5  |  0.5  |  4  |
"""


def test_profile_groups_per_epoch_and_probe_shares():
    result = summarise(parse(REPORT))
    assert result["epochs"] == 2 and result["epoch_s"] == 5.0
    assert result["per_epoch_s"]["training steps"] == 4.0
    assert result["per_epoch_s"]["validation"] == pytest.approx(0.6)  # the test's steps not
    assert result["per_epoch_s"]["checkpoints"] == pytest.approx(0.1)
    assert result["rest_of_epoch_s"] == pytest.approx(0.3)
    assert result["probes"] == 2 and result["probe_s"] == pytest.approx(0.25)
    assert result["probe_share_of_epoch"] == pytest.approx(0.05)
    # the callback's clock leaves the image out: 0.1 s a probe, 2% of the 5 s epoch
    clocked = callback_clock(result, {"grad_probe_seconds": 0.1, "grad_image_seconds": 0.3})
    assert clocked["probe_share_of_epoch"] == pytest.approx(0.02) and clocked["image_s"] == 0.3
    assert callback_clock(result, {}) == result  # no probe ran: the profiler's figure stays


def test_end_to_end_rate_is_the_difference_of_two_runs():
    short, long = {"tokens": 100, "wall": 10.0}, {"tokens": 400, "wall": 13.0}
    assert per_epoch_rate(short, long, "wall") == 100.0  # start-up and one-off work cancel
    assert math.isnan(per_epoch_rate(long, {"tokens": 700, "wall": 12.0}, "wall"))


@pytest.mark.slow
def test_peer_program_trains_and_reports(tmp_path, corpus_file):
    out = tmp_path / "peer.json"
    proc = run_script("benchmarks/peer_examples.py", "--model", "lstm", "--epochs", "2",
                      "--hidden", "8", "--max-tokens", "2000", "--path", str(corpus_file),
                      "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    # 1800 training tokens in 32 columns of 56: windows of 35 and 20 targets, twice
    assert result["train_tokens"] == 2 * 55 * 32
    assert result["tokens_per_s"] > 0 and 1 < result["best_val_ppl"] < 28 + 1e-9
    assert math.isfinite(result["test_ppl"]) and "epoch 2 val ppl" in proc.stdout


def test_book_minibatches_read_each_row_on_from_where_it_stopped():
    from peer_book import sequential_minibatches

    ids = torch.arange(1000)
    batches = sequential_minibatches(ids, 4, 5, torch.Generator().manual_seed(3))
    assert len(batches) > 1 and all(X.shape == (4, 5) == Y.shape for X, Y in batches)
    for (X, Y), (X2, _) in zip(batches, batches[1:]):
        assert torch.equal(Y, X + 1)
        assert torch.equal(X2[:, 0], X[:, -1] + 1)  # each row goes on: the state carries
    firsts = [sequential_minibatches(ids, 4, 5, torch.Generator().manual_seed(s))[0][0]
              for s in range(20)]
    offsets = {int(X[0, 0]) for X in firsts}
    assert len(offsets) > 1 and offsets <= set(range(5))  # a random offset below num_steps


@pytest.mark.slow
def test_book_program_trains_and_reports(tmp_path, corpus_file):
    out = tmp_path / "book.json"
    proc = run_script("benchmarks/peer_book.py", "--epochs", "10", "--hidden", "8",
                      "--max-tokens", "2000", "--path", str(corpus_file), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    # 1800 training tokens, offset < 35: 55 or 56 columns of 32 rows, one 35-step window an epoch
    assert result["train_tokens"] == 10 * 32 * 35
    assert result["tokens_per_s"] > 0 and 1 < result["train_ppl"] < 28
    assert "epoch 10 perplexity" in proc.stdout  # and the book's prediction after it
