"""The native scoring path of the tanh cores (`cores.native_eval`): torch's fused rnn_tanh must
give what the step-by-step TanhRecurrence gives, state carried across chunks, to 1e-6 in
perplexity; training and book mode never take it."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from rnnlab.evaluation.heldout import stream_log_probs
from rnnlab.models import cores
from rnnlab.models.cores import ScratchRNN, TorchRNN
from rnnlab.models.lm import LanguageModel
from rnnlab.models.perplexity import token_ppl


def _model(kind: str, embedding_dim: int | None = None) -> LanguageModel:
    core = partial(ScratchRNN, num_hiddens=64) if kind == "scratch" else \
        partial(TorchRNN, "rnn", num_hiddens=64)
    torch.manual_seed(0)
    model = LanguageModel(core=core, vocab_size=28, optimizer=partial(torch.optim.SGD, lr=1.0),
                          embedding_dim=embedding_dim)
    with torch.no_grad():  # random weights: the state carries information, but W_hh's
        for name, p in model.named_parameters():  # spectral radius < 1, so no chaos that would
            p.normal_(0, 0.1 if "hh" in name else 0.5)  # amplify rounding differences

    return model.eval()


def _step_path(monkeypatch) -> None:
    monkeypatch.setattr(cores, "native_eval", lambda *a: False)


@pytest.mark.parametrize("kind,embedding_dim", [("scratch", None), ("scratch", 16),
                                                ("torch", None)])
def test_native_scores_equal_step_by_step(monkeypatch, kind, embedding_dim):
    model = _model(kind, embedding_dim)
    ids = torch.randint(0, 28, (301,), generator=torch.Generator().manual_seed(1))
    native = stream_log_probs(model, ids, chunk=64)  # 5 chunks: the state crosses 4 boundaries
    with monkeypatch.context() as m:
        _step_path(m)
        step = stream_log_probs(model, ids, chunk=64)
        whole = stream_log_probs(model, ids, chunk=1000)
    assert native.shape == step.shape == (300, 28)
    assert torch.allclose(native, step, atol=1e-5)
    assert abs(token_ppl(native, ids) - token_ppl(step, ids)) < 1e-6 * token_ppl(step, ids)
    # the carried state matters: chunks give the one-pass numbers, not a fresh start
    assert torch.allclose(step, whole, atol=1e-5)
    fresh = stream_log_probs(model, ids[64:], chunk=64)
    assert not torch.allclose(fresh[:5], native[64:69], atol=1e-3)


def test_native_path_taken_only_for_float32_scoring():
    h = torch.zeros(1, 8)
    W = torch.zeros(8, 8)
    ids = torch.zeros(3, 1, dtype=torch.long)
    with torch.no_grad():
        assert cores.native_eval(ids, h, W)
        assert not cores.native_eval(ids, h.double(), W.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not cores.native_eval(ids, h, W)
    assert not cores.native_eval(ids, h, W)  # a graph is wanted: training's path


def test_native_path_returns_the_state_the_step_path_returns(monkeypatch):
    core = _model("scratch").core
    ids = torch.randint(0, 28, (50, 3), generator=torch.Generator().manual_seed(2))
    h0 = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, (h,) = core(ids, (h0,))
        with monkeypatch.context() as m:
            _step_path(m)
            out_step, (h_step,) = core(ids, (h0,))
    assert torch.allclose(out, out_step, atol=1e-5) and torch.allclose(h, h_step, atol=1e-5)
    assert h.shape == (3, 64) and math.isfinite(float(out.sum()))
