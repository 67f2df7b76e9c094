"""One stream read as many rows (models.streams.parallel_stream): the one-stream logits and state
for every core, the check that catches a row that did not forget its start, and the held-out
paths that use it."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from rnnlab.errors import ConfigError
from rnnlab.evaluation.heldout import stream_log_probs
from rnnlab.models.cores import ScratchRNN, TorchRNN
from rnnlab.models.lm import LanguageModel
from rnnlab.models.perplexity import token_ppl
from rnnlab.models.streams import parallel_stream

CORES = {"scratch": partial(ScratchRNN, num_hiddens=32),
         "rnn": partial(TorchRNN, "rnn", num_hiddens=32),
         "gru": partial(TorchRNN, "gru", num_hiddens=32),
         "lstm": partial(TorchRNN, "lstm", num_hiddens=32, num_layers=2)}


def _model(kind: str, **kw) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(core=CORES[kind], vocab_size=28,
                          optimizer=partial(torch.optim.SGD, lr=1.0), **kw)
    with torch.no_grad():  # small recurrent weights: a network that forgets, as trained ones do
        for name, p in model.named_parameters():
            p.normal_(0, 0.05 if "hh" in name else 0.5)
    return model.eval()


def _ids(n: int) -> torch.Tensor:
    return torch.randint(0, 28, (n,), generator=torch.Generator().manual_seed(1))


class Counting:
    """A model's forward, recording the rows of every call."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __call__(self, X, state):
        self.rows.append(X.shape[0])
        return self.model(X, state)


@pytest.mark.parametrize("kind", list(CORES))
def test_rows_give_the_one_stream_logits_and_state(kind):
    model = _model(kind)
    X = _ids(1003).view(1, -1)  # 1003 = 7 + 100 + 8 x 112: a head read first
    with torch.no_grad():
        _, start = model(_ids(50).view(1, -1), model.begin_state(1))  # a carried, non-zero state
        ref, ref_state = model(X, start)
        forward = Counting(model)
        got, state = parallel_stream(forward, X, start, chunks=8, burn_in=100)
    assert forward.rows == [1, 8, 8]  # the head, the burn-ins, the rest: no row read again
    assert got.shape == ref.shape == (1003, 28)
    assert torch.allclose(got, ref, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(state, ref_state))
    assert all(s.is_contiguous() for s in state)  # cuDNN refuses a strided hidden state


def test_a_row_that_does_not_forget_is_read_again_from_the_true_state():
    model = _model("rnn")
    with torch.no_grad():  # W_hh = I: the state is a running sum, the start is never forgotten
        model.core.rnn.weight_hh_l0.copy_(torch.eye(32))
        model.core.rnn.weight_ih_l0.mul_(0.01)
    X = _ids(640).view(1, -1)
    with torch.no_grad():
        ref, ref_state = model(X, model.begin_state(1))
        forward = Counting(model)
        got, state = parallel_stream(forward, X, model.begin_state(1), chunks=4, burn_in=40)
    assert forward.rows == [4, 4, 1]  # row 1 failed its check: the rest as one stream
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(state[0], ref_state[0], atol=1e-5)


def test_short_streams_and_one_chunk_are_read_as_one_stream():
    model = _model("scratch")
    for n, chunks, burn_in in ((100, 16, 40), (5000, 1, 40), (5000, 16, 0)):
        forward = Counting(model)  # too short for 16 rows of 40 + 40; one row; no burn-in
        with torch.no_grad():
            parallel_stream(forward, _ids(n).view(1, -1), model.begin_state(1), chunks, burn_in)
        assert forward.rows == [1]


def test_held_out_scores_are_the_one_stream_scores(monkeypatch):
    from rnnlab.models import streams

    checked = []
    agree = streams._agree
    monkeypatch.setattr(streams, "_agree", lambda *a: checked.append(agree(*a)) or checked[-1])
    ids = _ids(3001)
    parallel = stream_log_probs(_model("lstm", eval_chunks=8, eval_burn_in=64), ids, chunk=1500)
    assert len(checked) == 2 * 7 and all(checked)  # two windows of 8 rows, every check passed
    one = stream_log_probs(_model("lstm", eval_chunks=1), ids, chunk=1500)
    assert torch.allclose(parallel, one, atol=1e-5)
    assert abs(token_ppl(parallel, ids) - token_ppl(one, ids)) < 1e-6 * token_ppl(one, ids)


@pytest.mark.parametrize("kw, match", [({"eval_chunks": 0}, "model.eval_chunks=0"),
                                       ({"eval_burn_in": -1}, "model.eval_burn_in=-1")])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        _model("rnn", **kw)


@pytest.mark.slow
def test_validation_and_test_in_a_run_score_what_one_stream_scores(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from conftest import TEXT, make_cfg

    from rnnlab.models import streams
    from rnnlab.training.run import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT * 80)  # val and test: ~1,300 tokens each
    checked = []
    agree = streams._agree
    monkeypatch.setattr(streams, "_agree", lambda *a: checked.append(agree(*a)) or checked[-1])
    scores = {}
    for chunks in (1, 4):
        cfg = make_cfg(tmp_path / str(chunks), corpus, [
            "model=lstm", "model.core.num_hiddens=32", f"model.eval_chunks={chunks}",
            "model.eval_burn_in=200", "data.eval_num_steps=4096", "trainer.max_epochs=2",
            "callbacks.sample_text.every_n_epochs=0", "~callbacks.gradients"])
        best = train(cfg)
        summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
        scores[chunks] = (best, summary["test_ppl"])
        if chunks == 1:
            assert not checked  # one row: nothing to check
    assert checked and all(checked)  # the rows were read side by side and each passed its check
    assert scores[4] == pytest.approx(scores[1], rel=1e-6)
