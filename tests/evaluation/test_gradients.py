"""The gradients-through-time probe against closed forms and finite differences; it never changes
training; the callback's TensorBoard output, summary.json and the report's figure."""

import copy
import json
import math
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from torch import nn

from rnnlab.analysis.report import write_report
from rnnlab.evaluation.probe import (
    Net,
    beyond_window,
    decay_per_step,
    hidden_grad_norms,
    model_copy,
    probe,
    probe_windows,
    reach,
    spectrum,
)
from rnnlab.models.cores import ScratchRNN, TorchRNN
from rnnlab.models.lm import LanguageModel
from rnnlab.training.run import train

V = 5


class LinearCore(nn.Module):
    """h_t = W h_{t-1}, no input: dh_T / dh_{T-k} = W^k, so dL/dh_{T-k} = (W^T)^k dL/dh_T."""

    def __init__(self, W: torch.Tensor, h0: torch.Tensor):
        super().__init__()
        self.input_size, self.num_hiddens = V, W.shape[0]
        self.W_hh = nn.Parameter(W.clone())
        self.register_buffer("h0", h0.clone())

    def begin_state(self, batch_size: int):
        return (self.h0[:batch_size].clone(),)

    def forward(self, inputs, state):
        (h,) = state
        outputs = []
        for _ in range(len(inputs)):
            h = h @ self.W_hh.T
            outputs.append(h)
        return torch.stack(outputs), (h,)


def linear_model(W: torch.Tensor, rows: int = 3):
    torch.manual_seed(1)
    return SimpleNamespace(embedding=None, core=LinearCore(W, torch.randn(rows, W.shape[0])),
                           head=nn.Linear(W.shape[0], V))


def orthogonal(n: int, scale: float) -> torch.Tensor:
    torch.manual_seed(2)
    return scale * torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))[0]


def test_g_of_k_equals_the_matrix_power_applied_to_the_last_gradient():
    torch.manual_seed(0)
    W = torch.randn(6, 6, dtype=torch.float64) / 6**0.5
    model = linear_model(W)
    X, Y = torch.randint(0, V, (3, 12)), torch.randint(0, V, (3, 12))
    g = hidden_grad_norms(model_copy(model, torch.float64, False), X, Y, 12)["h"]
    h = model.core.h0.double() @ torch.linalg.matrix_power(W, 12).T
    head = model.head.double()
    v = (F.softmax(head(h), -1) - F.one_hot(Y[:, -1], V).double()) @ head.weight  # dL/dh_T
    for k in range(13):
        expected = (v @ torch.linalg.matrix_power(W, k)).norm(dim=1).mean()  # rows: ((W^T)^k v)^T
        assert float(g[k]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_spectral_radius_sets_the_decay_rate_and_the_reach(scale):
    model = linear_model(orthogonal(8, scale))
    X = Y = torch.zeros(3, 40, dtype=torch.long)
    p = probe(model, X, Y, max_distance=30, num_steps=10)
    s = p.scalars()
    assert s["decay_per_step"] == pytest.approx(math.log(scale), abs=1e-6)
    assert s["w_hh_sigma_max"] == pytest.approx(scale, rel=1e-4)
    # Gelfand's estimate with Frobenius norms: at most n^(1/2048) = 1.001 too high for n = 8;
    # it is computed in float32 (W itself is rounded to it), so both bounds allow a few float32
    # roundings (rel. 1e-5), far below the 1e-3 that a wrong power (n^(1/1024)) would add
    assert scale * (1 - 1e-5) <= s["w_hh_radius"] <= scale * 8 ** (1 / 2048) * (1 + 1e-5)
    # 0.5^9 >= 1e-3 > 0.5^10; a growing gradient reaches the whole probe
    assert s["reach"] == (9 if scale < 1 else 30)


def test_spectrum_matches_eigenvalues_of_a_non_normal_matrix():
    torch.manual_seed(3)
    W = torch.randn(64, 64) / 8 + torch.triu(torch.randn(64, 64), 1) * 0.05
    sigma, radius = spectrum(W)
    assert sigma == pytest.approx(float(torch.linalg.matrix_norm(W.double(), 2)), rel=1e-4)
    assert radius == pytest.approx(float(torch.linalg.eigvals(W.double()).abs().max()), rel=0.01)
    assert all(math.isnan(x) for x in spectrum(torch.full((3, 3), math.nan)))


def test_decay_and_reach_of_a_known_curve():
    g = torch.tensor([2.0 * 0.8**k for k in range(50)], dtype=torch.float64)
    assert decay_per_step(g) == pytest.approx(math.log(0.8))
    assert reach(g) == 30  # 0.8^30 = 1.2e-3 >= 1e-3 > 0.8^31
    g[0] = math.nan  # the LSTM's c: reach is counted from the first number
    assert reach(g) == 31


def test_lstm_probe_agrees_with_finite_differences():
    torch.manual_seed(4)
    core = TorchRNN("lstm", input_size=V, num_hiddens=3, num_layers=2).double()
    model = SimpleNamespace(embedding=None, core=core, head=nn.Linear(3, V).double())
    X, Y = torch.randint(0, V, (1, 6)), torch.randint(0, V, (1, 6))
    g = hidden_grad_norms(model_copy(model, torch.float64, False), X, Y, 5)
    inputs = F.one_hot(X.T, V).double()

    def loss_from(k: int, state) -> float:  # run the last k steps from `state`, L_T
        with torch.no_grad():
            if k:
                _, state = core(inputs[6 - k :], state)
            return float(F.cross_entropy(model.head(state[0][-1]), Y[:, -1]))

    with torch.no_grad():
        states = [core.begin_state(1)]
        for t in range(6):
            states.append(core(inputs[t : t + 1], states[-1])[1])
    eps = 1e-6
    for k in range(6):
        for i, name in enumerate(("h", "c")):
            if name == "c" and k == 0:
                assert math.isnan(g["c"][0])  # c_T reaches L_T inside the step only
                continue
            grad = torch.zeros_like(states[6 - k][i])
            for idx in range(grad.numel()):
                plus, minus = ([s.clone() for s in states[6 - k]] for _ in range(2))
                plus[i].view(-1)[idx] += eps
                minus[i].view(-1)[idx] -= eps
                grad.view(-1)[idx] = (loss_from(k, tuple(plus)) - loss_from(k, tuple(minus))) / (
                    2 * eps)
            assert float(g[name][k]) == pytest.approx(float(grad.norm()), rel=1e-5), (name, k)


CORES = {"rnn_scratch": partial(ScratchRNN, num_hiddens=16),
         "rnn_scratch_book": partial(ScratchRNN, num_hiddens=16, fast=False),
         **{f"{kind}_{layers}": partial(TorchRNN, kind, num_hiddens=16, num_layers=layers)
            for kind in ("rnn", "gru", "lstm") for layers in (1, 2)}}


def lm(core, **kw) -> LanguageModel:
    torch.manual_seed(5)
    return LanguageModel(core=core, vocab_size=V, optimizer=partial(torch.optim.SGD, lr=1), **kw)


@pytest.mark.parametrize("name", CORES)
def test_every_model_is_probed_without_touching_weights_grads_mode_or_rng(name):
    model = lm(CORES[name], dropout=0.5, keep_prob=0.5)  # train mode would draw masks and cuts
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, Y = probe_windows(torch.randint(0, V, (300,)), 40, 4)
    rng = torch.get_rng_state()
    p = probe(model, X, Y, max_distance=30, num_steps=8)
    assert torch.equal(torch.get_rng_state(), rng) and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(p_.grad, torch.ones_like(p_)) for p_ in model.parameters())
    s = p.scalars()
    assert set(p.g) == ({"h", "c"} if "lstm" in name else {"h"}) and len(p.g["h"]) == 31
    assert torch.all(p.g["h"] > 0) and s["decay_per_step"] < 0 and 0 < s["beyond_window"] < 1
    kind, _, layers = name.partition("_")
    blocks = {"gru": 3, "lstm": 4}.get(kind, 1) * (int(layers) if layers.isdigit() else 1)
    assert len(p.spectra) == blocks  # one per layer and gate


class _RefuseEvalBackward(torch.autograd.Function):
    """Identity whose backward raises when the forward ran in eval mode, as cuDNN's RNN does."""

    @staticmethod
    def forward(ctx, x, training):
        ctx.training = training
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if not ctx.training:
            raise RuntimeError("cudnn RNN backward can only be called in training mode")
        return grad, None


class CudnnLikeCore(TorchRNN):
    def forward(self, inputs, state):
        outputs, state = super().forward(inputs, state)
        return _RefuseEvalBackward.apply(outputs, self.training), state


def test_probe_works_with_a_core_whose_backward_refuses_eval_mode():
    torch.manual_seed(5)
    # two layers with dropout between them and weight drop: the probe must draw none of it
    core = CudnnLikeCore("lstm", input_size=V, num_hiddens=8, num_layers=2, dropout=0.5,
                         weight_drop=0.5)
    model = SimpleNamespace(embedding=None, core=core, head=nn.Linear(8, V))
    core.eval()
    X, Y = torch.randint(0, V, (2, 30)), torch.randint(0, V, (2, 30))
    with pytest.raises(RuntimeError, match="training mode"):  # the stand-in does refuse
        core(F.one_hot(X.T, V).float(), core.begin_state(2))[0].sum().backward()
    first, second = (probe(model, X, Y, max_distance=20, num_steps=10) for _ in range(2))
    assert not core.training  # the model's own mode is left alone
    for a, b in zip(first.g.values(), second.g.values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # no mask drawn
    # and it is what eval mode computes: the same core without the refusal, copied in eval mode
    plain = TorchRNN("lstm", input_size=V, num_hiddens=8, num_layers=2).double().eval()
    plain.load_state_dict(core.state_dict())
    reference = SimpleNamespace(embedding=None, core=plain, head=copy.deepcopy(model.head).double())
    net = Net(None, plain, reference.head, V)
    expected = hidden_grad_norms(net, X, Y, 20)
    for key, g in first.g.items():
        torch.testing.assert_close(g, expected[key], rtol=1e-9, atol=0, equal_nan=True)
    assert 0 <= first.beyond_window <= 1


@pytest.mark.parametrize("name", ["rnn_scratch", "rnn_1", "rnn_scratch_book"])
def test_one_pass_tanh_g_of_k_equals_autograds_step_by_step(monkeypatch, name):
    import rnnlab.evaluation.probe as probe_module

    model = lm(partial(CORES[name], sigma=0.3) if "scratch" in name else CORES[name])
    with torch.no_grad():  # large enough that g(k) decays slowly, not to rounding noise
        for p in model.core.parameters():
            p.mul_(3.0) if "scratch" not in name else None
    X, Y = probe_windows(torch.randint(0, V, (300,)), 40, 4)
    net = model_copy(model, torch.float64, False)
    assert probe_module.tanh_recurrent_matrix(net.core) is not None
    one_pass = hidden_grad_norms(net, X, Y, 30)["h"]
    monkeypatch.setattr(probe_module, "tanh_recurrent_matrix", lambda core: None)
    step = hidden_grad_norms(net, X, Y, 30)["h"]
    assert one_pass.shape == step.shape == (31,)
    assert one_pass[-1] > 1e-12 * one_pass[0]  # the comparison is not of numbers near zero
    torch.testing.assert_close(one_pass, step, rtol=1e-9, atol=0)


@pytest.mark.parametrize("sigma", [0.1, 0.3])  # 0.1: g(150) far below float32's range
def test_one_pass_in_float32_matches_float64_autograd(monkeypatch, sigma):
    import rnnlab.evaluation.probe as probe_module

    model = lm(partial(ScratchRNN, num_hiddens=16, sigma=sigma))
    X, Y = probe_windows(torch.randint(0, V, (400,)), 200, 4)
    low = hidden_grad_norms(model_copy(model, torch.float32, False), X, Y, 150)["h"]
    monkeypatch.setattr(probe_module, "tanh_recurrent_matrix", lambda core: None)
    exact = hidden_grad_norms(model_copy(model, torch.float64, False), X, Y, 150)["h"]
    if sigma < 0.2:
        assert 0 < float(exact[-1]) < 1e-45  # a float32 product chain would be 0 here
    assert bool((low > 0).all())
    torch.testing.assert_close(low, exact, rtol=1e-4, atol=0)


def test_one_pass_is_only_for_one_layer_tanh_cores():
    from rnnlab.evaluation.probe import tanh_recurrent_matrix

    for name in ("rnn_2", "gru_1", "lstm_1"):
        assert tanh_recurrent_matrix(CORES[name](input_size=V)) is None
    relu = TorchRNN("rnn", input_size=V, num_hiddens=4)
    relu.rnn.nonlinearity = "relu"
    assert tanh_recurrent_matrix(relu) is None


def test_fast_and_book_scratch_paths_probe_the_same():
    X, Y = probe_windows(torch.randint(0, V, (300,)), 40, 4)
    fast, book = (probe(lm(CORES[n]), X, Y, 30, 8) for n in ("rnn_scratch", "rnn_scratch_book"))
    assert torch.allclose(fast.g["h"], book.g["h"], rtol=1e-10)
    assert fast.beyond_window == pytest.approx(book.beyond_window, rel=1e-4)


def test_beyond_window_is_what_truncation_drops_from_the_models_own_gradient():
    model = lm(partial(ScratchRNN, num_hiddens=16, sigma=0.3))
    X, Y = probe_windows(torch.randint(0, V, (300,)), 40, 4)

    def grad(window: int) -> torch.Tensor:  # the training path: model(X, state), detached
        model.zero_grad()
        state, total = model.begin_state(4), 0
        for s in range(0, 40, window):
            logits, state = model(X[:, s : s + window], tuple(h.detach() for h in state))
            total = total + F.cross_entropy(logits, Y[:, s : s + window].T.reshape(-1),
                                            reduction="sum")
        (total / Y.numel()).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    full, cut = grad(40), grad(8)
    share = beyond_window(model_copy(model, torch.float32, True), X, Y, 8)
    assert share == pytest.approx(float((full - cut).norm() / full.norm()), rel=1e-4)
    assert share > 0.01
    assert beyond_window(model_copy(model, torch.float32, True), X, Y, 40) == 0.0


def test_contracting_recurrence_loses_less_beyond_the_window():
    X, Y = probe_windows(torch.randint(0, V, (300,)), 40, 3)
    shares = [probe(linear_model(orthogonal(8, s)), X, Y, 30, 8).beyond_window
              for s in (0.5, 0.95)]
    assert shares[0] < 0.01 < shares[1]


def summary_of(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())


@pytest.mark.slow
def test_training_with_the_probe_ends_with_the_same_perplexity(cfg_factory, tmp_path):
    common = ["trainer.max_epochs=2", "bptt=randomized", "model.dropout=0.3",
              "callbacks.sample_text.every_n_epochs=0", "test=false"]
    with_probe = cfg_factory(*common, "callbacks.gradients.every_n_epochs=1")
    train(with_probe)
    a = summary_of(with_probe)
    without = cfg_factory(*common, "~callbacks.gradients",
                          f"paths.output_dir={tmp_path / 'without'}")
    train(without)
    b = summary_of(without)
    assert a["final_val_ppl"] == b["final_val_ppl"] and a["best_val_ppl"] == b["best_val_ppl"]
    assert "grad_reach" not in b and a["grad_probe_epoch"] == 2
    assert a["grad_probe_seconds"] > 0 and a["grad_image_seconds"] > 0  # each on its own clock
    assert len(a["grad_g_h"]) == a["grad_max_distance"] + 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(with_probe.paths.output_dir) / "tb"),
                           size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    for tag in ("through_time/decay_per_step", "through_time/reach", "through_time/beyond_window",
                "through_time/w_hh_sigma_max"):
        assert [e.step for e in acc.Scalars(tag)][0] == 0 and len(acc.Scalars(tag)) == 3, tag
    images = acc.Images("through_time/g_k")  # once, at the end: every probe's curve in it
    assert len(images) == 1 and images[0].step == acc.Scalars("through_time/reach")[-1].step
    assert a["grad_reach"] == acc.Scalars("through_time/reach")[-1].value


@pytest.mark.parametrize("override, match", [
    ("callbacks.gradients.every_n_epochs=0", "callbacks.gradients.every_n_epochs=0 must be a "
                                             "positive integer"),
    ("callbacks.gradients.probe_steps=5000", "callbacks.gradients.probe_steps=5000 needs 5001 "
                                             "tokens but the validation split has"),
    ("callbacks.gradients.max_distance=300", "max_distance=300 is beyond the probe's"),
])
def test_bad_probe_settings_are_refused_with_the_key_and_the_fix(cfg_factory, override, match):
    with pytest.raises(ValueError, match=match):
        train(cfg_factory(override))


@pytest.mark.slow
def test_bad_probe_setting_on_the_command_line_is_one_line_and_exit_2(corpus_file, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/train.py"), f"data.path={corpus_file}",
         "callbacks.gradients.probe_steps=40", "callbacks.gradients.max_distance=50",
         f"hydra.run.dir={tmp_path / 'cli'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        "error: callbacks.gradients.max_distance=50 is beyond callbacks.gradients.probe_steps=40;"
        " use max_distance <= probe_steps"]


def test_report_draws_every_jobs_g_of_k_and_adds_the_columns(tmp_path):
    sweep = tmp_path / "sweep"
    for i, (model, rate) in enumerate([("rnn", 0.5), ("lstm", 0.9)]):
        job = sweep / f"{i}_model={model}"
        job.mkdir(parents=True)
        g = [rate**k for k in range(40)]
        job.joinpath("summary.json").write_text(json.dumps({
            "status": "finished", "overrides": [f"model={model}"], "best_val_ppl": 5.0 + i,
            "grad_g_h": g, "grad_decay_per_step": math.log(rate), "grad_reach": 9 + 56 * i,
            "grad_beyond_window": 0.01 * i, "grad_w_hh_sigma_max": 1.5, "grad_probe_epoch": 5}))
    markdown, written = write_report([sweep])
    assert sweep / "grad_through_time.png" in written
    assert (sweep / "grad_through_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = markdown.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| rank"))
    header, _, first, second = lines[header : header + 4]
    assert "reach (steps)" in header and "g(k) decay / step" in header
    assert "| -0.693 |" in first and "| 9 |" in first and "| 65 |" in second


@pytest.mark.slow  # a training run
def test_full_bptt_reports_nothing_beyond_a_window(cfg_factory):
    from rnnlab.training.run import train

    cfg = cfg_factory("bptt=full", "test=false", "callbacks.sample_text.every_n_epochs=0")
    train(cfg)
    s = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert s["grad_window"] is None and s["grad_beyond_window"] == 0.0
    assert s["grad_reach"] > 0  # the rest of the probe still measured


@pytest.mark.slow
def test_a_resumed_run_keeps_the_probes_made_before_the_resume(cfg_factory):
    common = ["callbacks.sample_text.every_n_epochs=0", "test=false",
              "callbacks.gradients.every_n_epochs=1"]
    first = cfg_factory(*common, "trainer.max_epochs=2")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)["callbacks"]
    (saved,) = [v for k, v in state.items() if k.startswith("GradientsThroughTime")]
    assert [epoch for epoch, _ in saved["history"]] == [0, 1, 2]
    resumed = cfg_factory(*common, "trainer.max_epochs=3", f"ckpt_path={last}")
    train(resumed)
    state = torch.load(last, weights_only=False)["callbacks"]
    (saved,) = [v for k, v in state.items() if k.startswith("GradientsThroughTime")]
    assert [epoch for epoch, _ in saved["history"]][:4] == [0, 1, 2, 3]
    assert len(saved["history"][0][1]["h"]) == summary_of(resumed)["grad_max_distance"] + 1
