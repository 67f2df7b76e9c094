"""Gradients through time (D2L 8.7): how far back the gradient of the loss reaches.

    from rnnlab.evaluation.probe import probe, probe_windows
    X, Y = probe_windows(dm.corpus["val"], probe_steps=200, rows=16)
    result = probe(model, X, Y, max_distance=150, num_steps=35)
    result.g["h"]        # g(k) = mean over rows of ||dL_T / dh_{T-k}||, k = 0..max_distance
    result.scalars()     # decay_per_step, reach, beyond_window, w_hh_sigma_max, w_hh_radius, ...

Everything runs on copies of the model's embedding, core and head with torch.autograd.grad:
the model's weights, .grad, carried state and optimizer are never touched, and the RNG state is
restored afterwards. The copies are in train mode with every dropout (nn.RNN's between layers,
weight drop, nn.Dropout) at 0 and randomized truncation off (keep_prob 1), which computes what
eval mode would: cuDNN's RNN backward refuses eval mode ("cudnn RNN backward can only be called
in training mode"), so eval-mode copies crash the probe on a GPU. Turning cuDNN off for the probe
would also work, but would measure other kernels than the ones trained with and flip a
process-wide flag; train mode without dropout keeps the same kernels and touches nothing
global. g(k) is computed in float64 because an untrained RNN's g(k) falls below float32's
smallest number within a hundred steps; for one-layer tanh cores it is computed in one pass in
float32, each step's gradient rescaled (`tanh_grad_norms`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.models.cores import ScratchRNN

REACH_RATIO = 1e-3  # reach: the largest k with g(k) >= REACH_RATIO * g(0)
GATES = {"rnn": ("",), "gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o")}  # torch's order


@dataclass
class Net:
    """The parts of a LanguageModel the probe needs (float64 or float32 copies)."""

    embedding: nn.Embedding | None
    core: nn.Module
    head: nn.Linear
    vocab_size: int

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def encode(self, X: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (T, B, F) inputs: the embedding, or one-hot vectors (the same math as
        the cores' row lookup, and a float input keeps every core in the copy's dtype)."""
        if self.embedding is not None:
            return self.embedding(X.T.long())
        return F.one_hot(X.T.long(), self.core.input_size).to(self.dtype)

    def begin_state(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        return tuple(s.to(self.dtype) for s in self.core.begin_state(batch_size))


def _deterministic(module: nn.Module) -> nn.Module:
    """A train-mode module that draws nothing: what eval mode computes, but a backward that
    cuDNN accepts (see the module docstring)."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        if isinstance(m, nn.RNNBase):
            m.dropout = 0.0
        if getattr(m, "weight_drop", None):
            m.weight_drop = 0.0
        if getattr(m, "keep_prob", 1.0) != 1.0:
            m.keep_prob = 1.0
    return module


def model_copy(model: nn.Module, dtype: torch.dtype, weight_grads: bool) -> Net:
    """Copies of `model.embedding`, `model.core`, `model.head` in `dtype`, in train mode with
    nothing random (`_deterministic`); their
    weights require grad only if `weight_grads` (g(k) needs none: autograd then skips dW)."""
    parts = [None if m is None else _deterministic(copy.deepcopy(m).to(dtype).train())
             for m in (model.embedding, model.core, model.head)]
    for part in parts:
        for p in part.parameters() if part is not None else ():
            p.grad = None
            p.requires_grad_(weight_grads)
    rnn = getattr(parts[1], "rnn", None)
    if hasattr(rnn, "flatten_parameters"):  # cuDNN wants its weights in one block again
        rnn.flatten_parameters()
    return Net(*parts, vocab_size=parts[2].out_features)


def probe_windows(tokens: torch.Tensor, probe_steps: int, rows: int) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """`rows` windows of `probe_steps` tokens evenly spaced over `tokens` (the same ones for
    every run and epoch): inputs X and targets Y, both (rows, probe_steps)."""
    if len(tokens) < probe_steps + 1:
        raise ValueError(f"probe_steps={probe_steps} needs {probe_steps + 1} tokens, the split "
                         f"has {len(tokens)}")
    starts = torch.linspace(0, len(tokens) - probe_steps - 1, rows).long()
    windows = tokens[starts[:, None] + torch.arange(probe_steps + 1)]
    return windows[:, :-1], windows[:, 1:]


def _row_norms(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """||grad|| per row; states are (B, H) or (layers, B, H): all layers count."""
    grad = torch.zeros_like(like) if grad is None else grad
    return grad.movedim(-2, 0).reshape(grad.shape[-2], -1).norm(dim=1)


def tanh_recurrent_matrix(core: nn.Module) -> torch.Tensor | None:
    """W with h_t = tanh(a_t + h_{t-1} W) for a one-layer tanh core (ScratchRNN, nn.RNN with
    one layer), else None."""
    if isinstance(core, ScratchRNN):
        return core.W_hh
    rnn = getattr(core, "rnn", None)
    if isinstance(rnn, nn.RNN) and rnn.num_layers == 1 and rnn.nonlinearity == "tanh":
        return rnn.weight_hh_l0.T
    return None


def tanh_grad_norms(net: Net, X: torch.Tensor, Y: torch.Tensor, max_distance: int,
                    W: torch.Tensor) -> dict[str, torch.Tensor]:
    """`hidden_grad_norms` for a one-layer tanh core in one pass: the forward pass without a
    graph, then dL/dh_{t-1} = (dL/dh_t * (1 - h_t^2)) W^T written out, one product a step (what
    autograd computes, without building a graph step by step). Each row's gradient is scaled
    back to norm 1 after every step and its log-norm summed in float64, so a float32 copy can
    neither underflow nor overflow: float32 products (W fits a core's cache at 512 hidden,
    float64's does not) at float32's precision, about 1e-6 relative in g(k)."""
    with torch.no_grad():
        inputs = net.encode(X)
        h, _ = net.core(inputs, net.begin_state(X.shape[0]))  # h[t] = h_(t+1)
        logits = net.head(h[-1])
        dlogits = torch.softmax(logits, -1)
        dlogits[torch.arange(len(logits)), Y[:, -1].long()] -= 1  # d(summed CE)/dlogits
        dh = dlogits @ net.head.weight
        log_scale = torch.zeros(len(dh), dtype=torch.float64, device=dh.device)
        norms = [dh.double().norm(dim=1).mean()]
        Wt = W.detach().T
        for k in range(1, max_distance + 1):
            h_t = h[len(h) - k]
            dh = (dh * (1 - h_t * h_t)) @ Wt
            n = dh.norm(dim=1)
            log_scale = log_scale + n.double().log()  # -inf once a row's gradient is 0
            norms.append(log_scale.exp().mean())
            dh = dh / torch.where(n > 0, n, 1.0)[:, None]
    return {"h": torch.stack(norms).cpu()}


def hidden_grad_norms(net: Net, X: torch.Tensor, Y: torch.Tensor,
                      max_distance: int) -> dict[str, torch.Tensor]:
    """g(k) for k = 0..max_distance: the mean over rows of ||dL_T / ds_{T-k}|| for each state
    tensor s ("h"; "h" and "c" for an LSTM), L_T the loss at the last position. The core runs one
    step at a time so that every step's state is a tensor of the graph; one backward pass
    (`tanh_grad_norms` does it in one pass without a graph for one-layer tanh cores).
    g_c(0) is NaN: the LSTM computes h_T from c_T inside its step, so the c_T it returns does not
    lead to L_T."""
    W = tanh_recurrent_matrix(net.core)
    if W is not None:
        return tanh_grad_norms(net, X, Y, max_distance, W)
    inputs = net.encode(X)
    T, warm = len(inputs), len(inputs) - max_distance
    state = net.begin_state(X.shape[0])
    if warm:
        with torch.no_grad():  # the steps before T - max_distance need no graph: one call
            _, state = net.core(inputs[:warm], state)
    state = tuple(s.detach().requires_grad_() for s in state)
    states = [state]  # states[j]: the state after warm + j steps
    for t in range(warm, T):
        _, state = net.core(inputs[t : t + 1], state)
        states.append(state)
    top = state[0][-1] if state[0].dim() == 3 else state[0]  # the last layer's h_T
    # summed over rows: rows are independent, so each row's gradient is its own loss's
    loss = F.cross_entropy(net.head(top), Y[:, -1].long(), reduction="sum")
    wanted = states[::-1]  # k = 0..max_distance
    flat = [s for st in wanted for s in st]
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    names = ("h", "c")[: len(state)]
    out = {}
    for i, name in enumerate(names):
        per_k = [_row_norms(grads[j * len(names) + i], st[i]).mean()
                 for j, st in enumerate(wanted)]
        out[name] = torch.stack(per_k).detach().cpu()
    if "c" in out:  # the LSTM's c_T reaches L_T inside its last step, not through the c_T output
        out["c"][0] = math.nan
    return out


class _Gate(torch.autograd.Function):
    """The identity; its backward passes the gradient while `switch.open`, else zeros (what a
    detach there would give), so one graph serves both backward passes of `beyond_window`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, switch) -> torch.Tensor:
        ctx.switch = switch
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (grad if ctx.switch.open else torch.zeros_like(grad)), None


def beyond_window(net: Net, X: torch.Tensor, Y: torch.Tensor, num_steps: int | None) -> float:
    """||G_full - G_window|| / ||G_full||: the share of the full-BPTT weight gradient of the
    probe's mean token loss that crosses a window boundary every `num_steps` steps, i.e. what
    truncated BPTT throws away (regular windows; randomized windows of mean `num_steps` in
    expectation). None (bptt=full: no window) drops nothing: 0, not a number for some other
    window. One forward pass, window by window with a `_Gate` on the state between them, and two
    backward passes through it: the gates open (full BPTT), then shut (the state detached every
    `num_steps` steps, as truncated BPTT trains)."""
    if num_steps is None or num_steps >= X.shape[1]:
        return 0.0
    params = [p for m in (net.embedding, net.core, net.head) if m is not None
              for p in m.parameters()]
    inputs, switch = net.encode(X), SimpleNamespace(open=True)
    state, total = net.begin_state(X.shape[0]), 0.0
    for start in range(0, len(inputs), num_steps):
        if start:
            state = tuple(_Gate.apply(s, switch) for s in state)
        outputs, state = net.core(inputs[start : start + num_steps], state)
        logits = net.head(outputs).reshape(-1, net.vocab_size)
        total = total + F.cross_entropy(
            logits, Y[:, start : start + num_steps].T.reshape(-1).long(), reduction="sum")
    loss = total / Y.numel()

    def flat(grads) -> torch.Tensor:
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for g, p in zip(grads, params)])

    full = flat(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
    switch.open = False
    window = flat(torch.autograd.grad(loss, params, allow_unused=True))
    return float((full - window).norm() / full.norm())


def w_hh_blocks(core: nn.Module) -> dict[str, torch.Tensor]:
    """The recurrent matrices by name: "l0" for a plain RNN layer, "l0_f" etc. for the gates'
    blocks of a GRU (r, z, n) or LSTM (i, f, g, o), one per layer."""
    if hasattr(core, "W_hh"):
        return {"l0": core.W_hh}
    rnn, out = core.rnn, {}
    gates = GATES[core.kind]
    for i in range(rnn.num_layers):
        blocks = getattr(rnn, f"weight_hh_l{i}").chunk(len(gates))
        out.update({f"l{i}" + (f"_{g}" if g else ""): b for g, b in zip(gates, blocks)})
    return out


def spectrum(W: torch.Tensor, squarings: int = 10) -> tuple[float, float]:
    """(largest singular value, spectral radius); NaNs for a matrix that is not finite. The radius
    is Gelfand's ||W^n||^(1/n) with n = 2^squarings, by repeated squaring: a few matrix products
    instead of an eigendecomposition (docs/gradients.md has how it compares). It is an upper
    bound that tightens as n grows; tests/evaluation/test_gradients.py checks it against matrices
    of known radius."""
    W = W.detach().float()
    if not torch.isfinite(W).all():
        return math.nan, math.nan
    A, log_norm = W, torch.zeros((), dtype=torch.float64)
    for _ in range(squarings):  # A = W^(2^i) / ||W^(2^i)||, log_norm = log ||W^(2^i)||
        norm = torch.linalg.matrix_norm(A).double()
        if norm == 0:
            return float(torch.linalg.matrix_norm(W, 2)), 0.0
        A, log_norm = (A / norm.float()) @ (A / norm.float()), 2 * (log_norm + norm.log())
    log_norm = log_norm + torch.linalg.matrix_norm(A).double().log()
    return float(torch.linalg.matrix_norm(W, 2)), float((log_norm / 2**squarings).exp())


def decay_per_step(g: torch.Tensor) -> float:
    """The least-squares slope of ln g(k) over k (per step; < 0 vanishing, > 0 exploding), over
    the finite, positive values."""
    k = torch.arange(len(g), dtype=torch.float64)
    ok = torch.isfinite(g) & (g > 0)
    if ok.sum() < 2:
        return math.nan
    k, y = k[ok], g[ok].double().log()
    k = k - k.mean()
    return float((k * (y - y.mean())).sum() / (k * k).sum())


def reach(g: torch.Tensor, ratio: float = REACH_RATIO) -> float:
    """The largest k with g(k) >= ratio * g(k0), k0 the first k with a number (0, but 1 for the
    LSTM's c); len(g) - 1 means at least that far."""
    k0 = int(torch.isfinite(g).nonzero()[0]) if torch.isfinite(g).any() else 0
    if not (math.isfinite(g[k0]) and g[k0] > 0):
        return math.nan
    return float((g >= ratio * g[k0]).nonzero().max())


@dataclass
class Probe:
    g: dict[str, torch.Tensor]                  # "h" (and "c"): g(k), k = 0..max_distance
    beyond_window: float
    spectra: dict[str, tuple[float, float]]     # block name -> (sigma_max, spectral radius)

    def scalars(self) -> dict[str, float]:
        """The summary numbers, TensorBoard's names without the "through_time/" prefix."""
        out = {"decay_per_step": decay_per_step(self.g["h"]), "reach": reach(self.g["h"]),
               "beyond_window": self.beyond_window,
               "w_hh_sigma_max": max(s for s, _ in self.spectra.values()),
               "w_hh_radius": max(r for _, r in self.spectra.values())}
        if "c" in self.g:
            out.update(decay_per_step_c=decay_per_step(self.g["c"]), reach_c=reach(self.g["c"]))
        if len(self.spectra) > 1:
            for name, (sigma, radius) in self.spectra.items():
                out[f"w_hh_sigma_max/{name}"], out[f"w_hh_radius/{name}"] = sigma, radius
        return out


def probe(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, max_distance: int,
          num_steps: int | None) -> Probe:
    """Measure g(k), the share beyond a `num_steps` window, and W_hh's spectra for the model's
    current weights (anything with .embedding, .core, .head). See the module docstring for what
    it leaves untouched."""
    device = next(model.core.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.inference_mode(False), torch.enable_grad():
        X, Y = X.to(device), Y.to(device)
        # float64 for autograd's g(k): an untrained RNN's falls below float32's smallest
        # number within a hundred steps (the tanh path rescales instead)
        low = tanh_recurrent_matrix(model.core) is not None
        g = hidden_grad_norms(model_copy(model, torch.float32 if low else torch.float64, False),
                              X, Y, max_distance)
        # a weight gradient is not near underflow: float32, as trained
        share = beyond_window(model_copy(model, torch.float32, True), X, Y, num_steps)
    spectra = {name: spectrum(W) for name, W in w_hh_blocks(model.core).items()}
    return Probe(g, share, spectra)
