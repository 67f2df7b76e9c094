"""Kernel choices: every forced branch gives the plain path's numbers, `auto` times and caches,
and bf16 autocast reaches the hand-written recurrence with float32 results."""

import itertools
from functools import partial

import pytest
import torch

from rnnlab.config import checks
from rnnlab.kernels import choice as kernels
from rnnlab.kernels import onednn
from rnnlab.models.cores import ScratchRNN, TanhRecurrence, TorchRNN
from rnnlab.models.lm import LanguageModel

V, H, B, T = 28, 64, 8, 12
BRANCHES = list(itertools.product(["tanh", "sigmoid"],
                                  ["torch", "onednn", "contiguous"] if onednn.AVAILABLE
                                  else ["torch"],
                                  ["torch", "onednn"] if onednn.AVAILABLE else ["torch"]))
CORES = {"rnn_scratch": ScratchRNN, "rnn": partial(TorchRNN, "rnn", num_layers=2)}
# what this CPU lacks for oneDNN's bf16 (None: it has it); tests of bf16 through oneDNN skip
# where it is missing, naming it, and the refusal is tested with faked flags below
BF16_MISSING = checks.bf16_problem()
needs_bf16 = pytest.mark.skipif(BF16_MISSING is not None, reason=f"bf16: {BF16_MISSING}")
AVX2_ONLY = {"sse2", "avx", "avx2", "fma"}  # the AMD EPYC family 25 model 1
ZEN4 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}  # model 17
XEON_AMX = ZEN4 | {"amx_bf16", "amx_tile"}  # the Intel Xeon family 6 model 167


def loss_and_grads(core: str, X: torch.Tensor, Y: torch.Tensor, **choices):
    torch.manual_seed(0)
    model = LanguageModel(core=partial(CORES[core], num_hiddens=H), vocab_size=V,
                          optimizer=partial(torch.optim.SGD, lr=1.0))
    h0 = tuple(torch.randn_like(s) * 0.5 for s in model.begin_state(B))
    with kernels.forced(**choices):
        logits, state = model(X, h0)
        loss = torch.nn.functional.cross_entropy(logits, Y.T.reshape(-1))
        loss.backward()
    return [logits, state[0], loss] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("tanh, matmul, linear", BRANCHES)
def test_every_forced_branch_gives_the_plain_paths_outputs_and_gradients(core, tanh, matmul,
                                                                         linear):
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    plain = loss_and_grads(core, X, Y, tanh="tanh", matmul="torch", linear="torch")
    branch = loss_and_grads(core, X, Y, tanh=tanh, matmul=matmul, linear=linear)
    for got, expected in zip(branch, plain, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_auto_takes_a_clearly_faster_candidate_times_once_per_shape_and_reports(monkeypatch):
    calls = []

    def fake_time(candidates, rounds):  # sigmoid 5% faster at batch 3, 1% faster at batch 5
        calls.append(sorted(candidates))
        for fn in candidates.values():
            fn()  # the candidates run on the real shapes
        sigmoid = 0.95 if len(calls) == 1 else 0.99
        return {"tanh": 1.0, "sigmoid": sigmoid}

    monkeypatch.setattr(kernels, "_time", fake_time)
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_made", {})
    with kernels.forced(tanh="auto"):
        assert kernels.tanh_via_sigmoid(torch.randn(3, 7))
        assert kernels.tanh_via_sigmoid(torch.randn(3, 7))  # cached: not timed again
        assert not kernels.tanh_via_sigmoid(torch.randn(5, 7))  # within 3%: the plain path
    assert calls == [["sigmoid", "tanh"]] * 2
    threads = torch.get_num_threads()
    plural = "s" * (threads > 1)
    assert kernels.made() == {f"tanh 3x7 float32 {threads} thread{plural}": "sigmoid",
                              f"tanh 5x7 float32 {threads} thread{plural}": "tanh"}


@pytest.mark.skipif(not onednn.AVAILABLE, reason="torch built without oneDNN")
def test_auto_matmul_and_linear_choose_among_their_candidates_on_real_shapes(monkeypatch):
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_made", {})
    W, a, c = torch.randn(16, 16), torch.randn(4, 16), torch.randn(4, 16)
    x, w, b = torch.randn(40, 16), torch.randn(28, 16), torch.randn(28)
    rng = torch.get_rng_state()
    with kernels.forced(matmul="auto", linear="auto"):
        torch.testing.assert_close(kernels.step_matmul(W, 4, steps=10)(a, c, 2.0),
                                   torch.addmm(c, a, W, beta=2))
        torch.testing.assert_close(kernels.linear(x, w, b), torch.nn.functional.linear(x, w, b))
    assert torch.equal(torch.get_rng_state(), rng)  # timing leaves the run's random stream be
    made = kernels.made()
    assert {label.split()[0] for label in made} == {"matmul", "linear"}
    assert any(label.startswith("linear 64x16x28 ") for label in made)  # 40 rows: bucket 64
    assert set(made.values()) <= {"torch", "onednn"}


@pytest.mark.skipif(not onednn.AVAILABLE, reason="torch built without oneDNN")
def test_a_transposed_w_is_its_own_choice_with_a_row_major_copy_among_the_candidates(
        monkeypatch):
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_made", {})
    W, a, c = torch.randn(16, 16), torch.randn(4, 16), torch.randn(4, 16)
    timed = []
    real_time = kernels._time
    monkeypatch.setattr(kernels, "_time", lambda cands, rounds: timed.append(set(cands))
                        or real_time(cands, rounds))
    with kernels.forced(matmul="auto"):
        for M in (W, W.T):  # the forward pass's W_hh, the backward pass's W_hh^T
            torch.testing.assert_close(kernels.step_matmul(M, 4, steps=10)(a, c, 2.0),
                                       torch.addmm(c, a, M, beta=2))
    assert timed == [{"torch", "onednn"}, {"torch", "onednn", "contiguous"}]
    made = kernels.made()
    transposed = [label for label in made if " transposed " in label]
    assert len(made) == 2 and transposed and transposed[0].startswith("matmul 4x16x16 transposed")
    assert made[transposed[0]] in ("torch", "onednn", "contiguous")


@pytest.mark.skipif(not onednn.AVAILABLE, reason="torch built without oneDNN")
def test_a_run_recorded_before_transposed_labels_keeps_its_choice_for_both_passes(monkeypatch):
    monkeypatch.setattr(kernels, "_cache", {})
    monkeypatch.setattr(kernels, "_made", {})
    monkeypatch.setattr(kernels, "_kept", {})
    monkeypatch.setattr(kernels, "_time", lambda *a: pytest.fail("a kept choice is not timed"))
    kernels.keep({"matmul 4x16x16 float32 2 threads": "torch"})  # what such a run recorded
    W, a, c = torch.randn(16, 16), torch.randn(4, 16), torch.randn(4, 16)
    with kernels.forced(matmul="auto"):
        out = kernels.step_matmul(W.T, 4, steps=10)(a, c)
    assert torch.equal(out, torch.addmm(c, a, W.T))  # the view, as that run multiplied
    assert list(kernels.made().values()) == ["torch"]


def test_a_bad_choice_names_the_key_and_the_values(monkeypatch):
    with pytest.raises(ValueError, match=r"kernels.tanh='fast' is unknown; use one of "
                                         r"\['auto', 'tanh', 'sigmoid'\]"):
        kernels.configure(tanh="fast")
    with pytest.raises(ValueError, match=r"kernels.gemm is unknown; the choices are \['tanh', "):
        kernels.configure(gemm="torch")
    monkeypatch.setattr(onednn, "AVAILABLE", False)
    with pytest.raises(ValueError, match="kernels.linear=onednn: this torch is built without"):
        kernels.configure(linear="onednn")


def scratch_run(bf16: bool, **choices):
    torch.manual_seed(0)
    core = ScratchRNN(V, H)
    with torch.no_grad():
        core.W_hh.normal_(0, 0.1)  # a recurrence that matters, not the book's 0.01
    X = torch.randint(0, V, (T, B))
    with kernels.forced(**choices), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        outputs, _ = core(X, core.begin_state(B))
        (outputs * torch.linspace(-1, 1, H)).sum().backward()
    return outputs, [p.grad for p in core.parameters()]


@pytest.mark.parametrize("matmul", ["torch", "onednn"] if onednn.AVAILABLE else ["torch"])
@pytest.mark.parametrize("tanh", ["tanh", "sigmoid"])
def test_bf16_autocast_runs_the_recurrence_in_bf16_with_float32_results(matmul, tanh,
                                                                        monkeypatch):
    if matmul == "onednn" and BF16_MISSING:
        pytest.skip(f"oneDNN bf16: {BF16_MISSING}")
    cast = []
    real = kernels.step_matmul
    monkeypatch.setattr(kernels, "step_matmul", lambda W, *a, **k: cast.append(W.dtype) or
                        real(W, *a, **k))
    out32, grads32 = scratch_run(False, tanh=tanh, matmul=matmul)
    cast.clear()
    out16, grads16 = scratch_run(True, tanh=tanh, matmul=matmul, recurrence_dtype="bfloat16")
    assert cast == [torch.bfloat16] * 2  # W_hh cast once forward and once backward, not per step
    assert out16.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads16)
    assert not torch.equal(out16, out32)  # the products did run in bf16
    torch.testing.assert_close(out16, out32, rtol=0, atol=2e-2)
    for g16, g32 in zip(grads16, grads32, strict=True):
        assert torch.linalg.norm(g16 - g32) < 0.02 * torch.linalg.norm(g32)


@needs_bf16  # nn.LSTM's oneDNN primitive has no bf16 without it
@pytest.mark.parametrize("kind", ["rnn_scratch", "rnn", "gru", "lstm"])
def test_bf16_autocast_reaches_every_core_and_keeps_the_loss_and_the_scores_accurate(kind):
    g = torch.Generator().manual_seed(2)
    X, Y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    core = ScratchRNN if kind == "rnn_scratch" else partial(TorchRNN, kind)

    def model():
        torch.manual_seed(0)
        return LanguageModel(core=partial(core, num_hiddens=H), vocab_size=V,
                             optimizer=partial(torch.optim.SGD, lr=1.0))

    def loss_and_grads(bf16: bool):
        m = model()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = m._loss((X, Y), carry=False)
        loss.backward()
        return loss, [p.grad for p in m.parameters()]

    loss32, grads32 = loss_and_grads(False)
    loss16, grads16 = loss_and_grads(True)
    # the products did run in bf16 (the loss of an untrained model may round alike)
    assert not any(torch.equal(g16, g32) for g16, g32 in zip(grads16, grads32, strict=True))
    assert abs(loss16.item() - loss32.item()) < 0.01 * loss32.item()
    for g16, g32 in zip(grads16, grads32, strict=True):
        assert g16.dtype == torch.float32
        assert torch.linalg.norm(g16 - g32) < 0.05 * torch.linalg.norm(g32)
    # held-out scores are float32 whatever autocast the caller has on: the same to the bit
    scores = []
    for bf16 in (False, True):
        m = model()
        m._eval_start()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            m._eval_step((X, Y))
        scores.append(m.score.perplexity())
    assert scores[0] == scores[1]


def test_recurrence_gradcheck_with_forced_sigmoid():
    torch.manual_seed(0)
    xw = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    W = (torch.randn(4, 4, dtype=torch.float64) * 0.5).requires_grad_()
    with kernels.forced(tanh="sigmoid"):
        assert torch.autograd.gradcheck(TanhRecurrence.apply, (xw, h0, W))


def test_forced_choices_are_reported_as_forced():
    with kernels.forced(tanh="sigmoid"):
        kernels.tanh_via_sigmoid(torch.randn(2, 3))
        assert kernels.made()[f"tanh 2x3 float32 {torch.get_num_threads()} thread"
                              f"{'s' * (torch.get_num_threads() > 1)}"] == "sigmoid (forced)"


def test_precision_auto_is_bf16_only_on_a_cpu_with_bf16_matrix_units(monkeypatch):
    monkeypatch.setattr(checks, "cpu_flags", lambda: XEON_AMX)
    monkeypatch.setattr(kernels, "bf16_matrix_units", lambda: True)
    assert kernels.resolve_precision("auto", "cpu") == "bf16-mixed"
    assert kernels.resolve_precision("auto", "gpu") == "32-true"
    assert kernels.resolve_precision("32-true", "cpu") == "32-true"
    monkeypatch.setattr(kernels, "bf16_matrix_units", lambda: False)
    assert kernels.resolve_precision("auto", "cpu") == "32-true"
    assert kernels.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


@pytest.mark.parametrize("flags, auto", [(AVX2_ONLY, "32-true"), (ZEN4, "bf16-mixed"),
                                         (XEON_AMX, "bf16-mixed"),
                                         (AVX2_ONLY | {"avx_ne_convert"}, "32-true")])
def test_precision_follows_the_cpus_flags(monkeypatch, flags, auto):
    monkeypatch.setattr(checks, "cpu_flags", lambda *a: set(flags))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels.resolve_precision("auto", "cpu") == auto
    assert kernels.resolve_precision("auto", "auto") == auto
    assert kernels.resolve_precision("32-true", "cpu") == "32-true"
    if flags == AVX2_ONLY:  # refused in one line naming what is missing, never oneDNN's error
        with pytest.raises(checks.ConfigError, match="avx512bw, avx512vl, avx512dq") as e:
            kernels.resolve_precision("bf16-mixed", "cpu")
        assert "\n" not in str(e.value) and "avx_ne_convert" in str(e.value)
        assert kernels.resolve_precision("bf16-mixed", "gpu") == "bf16-mixed"  # not the CPU's
    else:
        assert kernels.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse2 avx2\n")
    assert checks.cpu_flags(info) == {"fpu", "sse2", "avx2"}
    assert checks.cpu_flags(tmp_path / "none") is None
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # an Arm CPU: no x86 rule
    assert checks.cpu_flags(info) is None and checks.bf16_problem(set()) is None
    assert "avx512dq" in checks.bf16_problem({"sse2", "avx512bw", "avx512vl"})


@pytest.mark.slow
@needs_bf16
def test_bf16_training_run_records_its_precision_and_learns(cfg_factory):
    import json
    from pathlib import Path

    from rnnlab.training.run import train

    cfg = cfg_factory("trainer.precision=bf16-mixed", "trainer.max_epochs=2")
    best = train(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["precision"] == "bf16-mixed" and summary["status"] == "finished"
    assert 1 < best < 0.7 * V and summary["test_ppl"] < 0.7 * V  # learned: below uniform


@pytest.mark.slow
def test_presets_pin_float32_and_the_plain_kernels_while_the_default_is_auto(cfg_factory):
    assert cfg_factory().trainer.precision == "auto"
    choices = {k: v for k, v in cfg_factory().kernels.items() if k not in ("cache_dir", "retime")}
    assert set(choices) == set(kernels.CANDIDATES) and set(choices.values()) == {"auto"}
    for preset in ("best", "book_rnn"):
        cfg = cfg_factory(f"experiment={preset}")
        assert cfg.trainer.precision == "32-true", preset  # the same numbers on a bf16 CPU
        assert {k: cfg.kernels[k] for k in kernels.CANDIDATES} == {
            "tanh": "tanh", "matmul": "torch", "linear": "torch", "recurrence_dtype": "float32"}


def test_bf16_autocast_with_float32_recurrence_forced_gives_the_float32_numbers():
    out32, grads32 = scratch_run(False, tanh="tanh", matmul="torch")
    out, grads = scratch_run(True, tanh="tanh", matmul="torch", recurrence_dtype="float32")
    torch.testing.assert_close(out, out32, rtol=1e-5, atol=1e-5)
    for g, g32 in zip(grads, grads32, strict=True):
        torch.testing.assert_close(g, g32, rtol=1e-5, atol=1e-5)
