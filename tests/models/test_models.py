"""Recurrent cores, the LM module's math, clipping and truncation, without a Trainer."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.models.clipping import clip_grad_norm_book
from rnnlab.models.cores import ScratchRNN, TorchRNN
from rnnlab.models.lm import LanguageModel

V, H = 11, 16


def lm(core, **kw) -> LanguageModel:
    return LanguageModel(core=core, vocab_size=V, optimizer=partial(torch.optim.SGD, lr=1.0),
                         **kw)


def test_fast_path_matches_the_book_outputs_and_gradients():
    torch.manual_seed(0)
    book = lm(partial(ScratchRNN, num_hiddens=H, fast=False))
    fast = lm(partial(ScratchRNN, num_hiddens=H, fast=True))
    fast.load_state_dict(book.state_dict())
    X, Y = torch.randint(0, V, (3, 7)), torch.randint(0, V, (3, 7))
    outs = []
    for model in (book, fast):
        logits, (h,) = model(X, model.begin_state(3))
        F.cross_entropy(logits, Y.T.reshape(-1)).backward()
        outs.append((logits, h, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    for g_book, g_fast in zip(outs[0][2], outs[1][2]):
        torch.testing.assert_close(g_book, g_fast)


def test_scratch_core_equals_nn_rnn_with_the_same_weights():
    torch.manual_seed(0)
    rnn = nn.RNN(V, H)
    core = ScratchRNN(V, H)
    core.load_from_torch_rnn(rnn)
    X = torch.randint(0, V, (6, 4))
    h0 = torch.randn(1, 4, H)
    expected, h_n = rnn(F.one_hot(X, V).float(), h0)
    got, (h,) = core(X, (h0[0],))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(h, h_n[0])
    torch_core = TorchRNN("rnn", V, H)
    torch_core.rnn.load_state_dict(rnn.state_dict())
    got2, _ = torch_core(X, (h0,))
    torch.testing.assert_close(got2, expected)


def test_book_initialisation():
    model = lm(partial(ScratchRNN, num_hiddens=512))
    assert model.core.b_h.abs().sum() == 0 and model.head.bias.abs().sum() == 0
    assert 0.008 < model.core.W_hh.std() < 0.012 and 0.008 < model.head.weight.std() < 0.012


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_torch_cores_keep_tuple_states(kind):
    core = TorchRNN(kind, V, H, num_layers=2, dropout=0.1)
    state = core.begin_state(5)
    assert len(state) == (2 if kind == "lstm" else 1) and state[0].shape == (2, 5, H)
    out, new = core(torch.randint(0, V, (4, 5)), state)
    assert out.shape == (4, 5, H) and len(new) == len(state)


def test_uniform_prediction_perplexity_equals_vocabulary_size():
    model = lm(partial(ScratchRNN, num_hiddens=H))
    for p in model.parameters():
        nn.init.zeros_(p)  # zero weights: equal logits, a uniform prediction
    loss, n = model._loss((torch.randint(0, V, (4, 9)), torch.randint(0, V, (4, 9))), carry=False)
    assert torch.exp(loss).item() == pytest.approx(V, rel=1e-6)


def test_book_clipping_equals_torch_clip_grad_norm():
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        p.grad = torch.randn_like(p) * 10
        q.grad = p.grad.clone()
    norm = clip_grad_norm_book(a, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(b, 1.0)
    torch.testing.assert_close(norm, expected)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    total = torch.sqrt(sum((p.grad**2).sum() for p in a))
    assert total == pytest.approx(1.0, rel=1e-5)
    small = [nn.Parameter(torch.ones(2))]
    small[0].grad = torch.full((2,), 0.1)
    clip_grad_norm_book(small, 1.0)
    assert torch.equal(small[0].grad, torch.full((2,), 0.1))  # under the threshold: untouched


def capture_embeddings(model) -> list:
    captured = []

    def hook(module, inputs, output):
        output.retain_grad()
        captured.append(output)

    model.embedding.register_forward_hook(hook)
    return captured


def _input_grads(model, windows):
    """Gradients reaching each window's embedded inputs from the last window's loss."""
    captured = capture_embeddings(model)
    loss = None
    for X in windows:
        loss, _ = model._loss((X, X), carry=True)
    loss.backward()
    return [c.grad for c in captured]


def test_regular_truncation_blocks_gradients_across_windows():
    torch.manual_seed(0)
    model = lm(partial(ScratchRNN, num_hiddens=H), embedding_dim=4)
    X = torch.randint(0, V, (2, 10))
    grads = _input_grads(model, [X[:, :5], X[:, 5:]])
    assert grads[0] is None  # the carried state was detached at the window boundary
    assert grads[1].abs().sum() > 0


def test_full_window_lets_gradients_reach_the_first_token():
    torch.manual_seed(0)
    model = lm(partial(ScratchRNN, num_hiddens=H), embedding_dim=4)
    X = torch.randint(0, V, (2, 10))
    captured = capture_embeddings(model)
    logits, _ = model(X, model.begin_state(2))
    logits[-2:].sum().backward()  # only the last step's outputs
    assert captured[0].grad[:, 0].abs().sum() > 0  # reaches time step 0 through 9 steps


@pytest.mark.slow
def test_randomized_truncation_is_unbiased_for_the_scratch_core():
    torch.manual_seed(0)
    core = ScratchRNN(3, 4, sigma=0.5)
    X = torch.randint(0, 3, (6, 2))

    def grad_hh(keep_prob):
        core.zero_grad()
        core.keep_prob = keep_prob
        out, _ = core(X, core.begin_state(2))
        out[-1].sum().backward()
        return core.W_hh.grad.clone()

    exact = grad_hh(1.0)
    mean = torch.stack([grad_hh(0.7) for _ in range(4000)]).mean(0)
    single = grad_hh(0.7)
    assert not torch.allclose(single, exact)  # each draw truncates
    torch.testing.assert_close(mean, exact, rtol=0.1, atol=0.02)


def test_hand_written_recurrence_backward_passes_gradcheck():
    from rnnlab.models.cores import TanhRecurrence

    torch.manual_seed(0)
    xw = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    W = (torch.randn(4, 4, dtype=torch.float64) * 0.5).requires_grad_()
    assert torch.autograd.gradcheck(TanhRecurrence.apply, (xw, h0, W))


def test_weight_drop_changes_training_outputs_only_and_keeps_gradients():
    torch.manual_seed(0)
    core = TorchRNN("lstm", V, H, weight_drop=0.5)
    X = torch.randint(0, V, (5, 2))
    core.eval()
    a, _ = core(X, core.begin_state(2))
    b, _ = core(X, core.begin_state(2))
    torch.testing.assert_close(a, b)  # no dropout in evaluation
    core.train()
    c, _ = core(X, core.begin_state(2))
    assert not torch.allclose(a, c)
    c.sum().backward()
    assert core.rnn.weight_hh_l0.grad is not None and core.rnn.weight_hh_l0.grad.abs().sum() > 0


def test_locked_dropout_uses_one_mask_for_all_time_steps():
    model = lm(partial(TorchRNN, "gru", num_hiddens=H), embedding_dim=6, dropout=0.5,
               locked_dropout=True)
    x = torch.ones(7, 3, 6)
    y = model.drop(x)
    assert torch.equal(y[0], y[-1]) and (y == 0).any()  # the same units dropped at every step
    model.eval()
    assert torch.equal(model.drop(x), x)


def test_clipping_hook_leaves_the_global_norm_at_the_threshold():
    torch.manual_seed(0)
    model = lm(partial(ScratchRNN, num_hiddens=H))
    X = torch.randint(0, V, (4, 6))
    loss, _ = model._loss((X, X), carry=False)
    (loss * 1e4).backward()
    before = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    model.configure_gradient_clipping(None, gradient_clip_val=0.5)
    after = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert before > 0.5 and after == pytest.approx(0.5, rel=1e-5)


def test_evaluation_does_not_reset_the_carried_training_state():
    model = lm(partial(ScratchRNN, num_hiddens=H))
    X = torch.randint(0, V, (2, 5))
    model._loss((X, X), carry=True)
    carried = model._state
    model._eval_start()
    model._eval_step((X[:1], X[:1]))  # validation in the middle of an epoch
    model._eval_end("val")
    assert model._state is carried


@pytest.mark.parametrize("num_layers,input_kind", [(1, "ids"), (2, "features")])
def test_rnn_cpu_kernel_matches_nn_rnn(num_layers, input_kind):
    torch.manual_seed(0)
    ours = TorchRNN("rnn", input_size=7, num_hiddens=16, num_layers=num_layers)
    theirs = TorchRNN("rnn", input_size=7, num_hiddens=16, num_layers=num_layers,
                      cpu_kernel="torch")
    theirs.load_state_dict(ours.state_dict())
    inputs = (torch.randint(0, 7, (9, 4)) if input_kind == "ids" else torch.randn(9, 4, 7))
    h0 = torch.randn(num_layers, 4, 16).tanh()
    results = []
    for core in (ours, theirs):
        out, (h,) = core(inputs, (h0,))
        (out.square().sum() + h.sum()).backward()
        results.append([out, h] + [p.grad for p in core.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rnn_cpu_kernel_is_checked():
    with pytest.raises(ValueError, match="cpu_kernel='cuda'"):
        TorchRNN("rnn", input_size=7, cpu_kernel="cuda")


@pytest.mark.slow
def test_compiled_scratch_core_matches_eager():
    """torch.compile (bench.py --compile) traces the hand-written recurrence; inductor takes over
    the products there, and values and gradients stay those of the eager core."""
    torch.manual_seed(0)
    core = ScratchRNN(V, H)
    X = torch.randint(0, V, (5, 3))
    results = []
    for fn in (core, torch.compile(core)):
        core.zero_grad()
        out, (h,) = fn(X, core.begin_state(3))
        (out.sum() + h.sum()).backward()
        results.append((out.detach(), core.W_hh.grad.clone(), core.W_xh.grad.clone()))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
