"""Recurrent cores: `forward(inputs, state) -> (outputs, state)` and `begin_state(batch_size)`.

    core = ScratchRNN(input_size=28, num_hiddens=512)        # D2L 8.5, explicit parameters
    core = TorchRNN("lstm", input_size=28, num_hiddens=512)   # D2L 8.6 / 9.x, cuDNN on a GPU
    outputs, state = core(inputs, core.begin_state(batch_size))

Inputs are time-major: token indices of shape (T, B), which a core treats as one-hot vectors of
width `input_size`, or float features (T, B, input_size) from an embedding. Outputs are
(T, B, num_hiddens); the language-model head lives in `models.lm`, so cores are interchangeable.
States are tuples of tensors, so the RNN's (H,) and the LSTM's (H, C) go through the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.config import checks
from rnnlab.kernels import choice as kernels

State = tuple[torch.Tensor, ...]


def native_eval(inputs: torch.Tensor, h: torch.Tensor, W_hh: torch.Tensor) -> bool:
    """Whether a tanh recurrence may run on torch's fused `rnn_tanh` (a C++ loop over the steps)
    instead of `TanhRecurrence`'s Python loop: scoring only (no graph wanted), on a CPU, in
    float32 outside autocast. That is one-stream held-out evaluation (val/test, dynamic
    evaluation's scoring, generation): one token per step, where Python's per-step work was a
    large share of a step. The numbers agree with the step path to float32 rounding (tested in
    tests/models/test_eval_path.py); training never takes this path."""
    return (not torch.is_grad_enabled() and h.device.type == "cpu" and h.dtype == torch.float32
            and W_hh.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and (not inputs.is_floating_point() or inputs.dtype == torch.float32))


def tanh_native(inputs: torch.Tensor, h0: torch.Tensor, input_size: int, W_ih: torch.Tensor,
                W_hh: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, State]:
    """H_t = tanh(X_t W_ih^T + b + H_{t-1} W_hh^T) by `torch.rnn_tanh`, in nn.RNN's weight layout
    (W_ih (H, input_size), W_hh (H, H)); ids become one-hot rows, whose product is exact.
    Pass W_hh column-major (the transpose of a contiguous matrix): its one-row product per step
    then runs faster than with nn.RNN's own row-major W_hh (measured: docs/performance.md,
    "Issue 28")."""
    if not inputs.is_floating_point():
        inputs = F.one_hot(inputs.long(), input_size).to(h0.dtype)
    params = [W_ih, W_hh, b, torch.zeros_like(b)]
    outputs, h = torch.rnn_tanh(inputs, h0.unsqueeze(0), params, True, 1, 0.0, False, False,
                                False)
    return outputs, (h[0],)


class TanhRecurrence(torch.autograd.Function):
    """H_t = tanh(XW_t + H_{t-1} W_hh) over all steps, with a hand-written backward pass.

    Each step is one matrix product and a few elementwise ops on its result while that result
    (256 x 512 floats at most, 0.5 MB) is still in cache; a pass over all steps' (T, B, H)
    tensors would read them back from memory. Which kernels run is measured (`kernels.choice`):
    tanh directly or as 2 sigmoid(2z) - 1 with 2 Z_t = 2 XW_t + H_{t-1} (2 W_hh) (which of torch's
    two is cheaper per element depends on the CPU), and the product through MKL's addmm or a
    pre-reordered oneDNN weight (the backward's W_hh^T also on a row-major copy).
    Backward: autograd would run two small matmuls per step (dH_{t-1} and dW_hh). Only the first
    is sequential: dZ_t = (dH_t + dZ_{t+1} W_hh^T) * (1 - H_t^2) is one product per step, and
    dW_hh = sum_t H_{t-1}^T dZ_t is one large matmul afterwards.
    Under bf16 autocast the products run in bfloat16 (W_hh cast once per pass, a bf16 copy of
    each H_t and dZ_t made as it is computed), while XW + product, tanh, H, dZ and the returned
    gradients stay float32 (dW_hh is a bf16 product's result, as autocast's would be).
    """

    @staticmethod
    def forward(ctx, xw: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor) -> torch.Tensor:
        T, B, H = xw.shape
        device = xw.device.type
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else xw.dtype
        with torch.autocast(device, enabled=False):  # the casts below are made once, here
            low = kernels.recurrence_dtype(h0, W_hh, low)
            sigmoid = kernels.tanh_via_sigmoid(xw[0])
            W = W_hh.to(low)
            plus_matmul = kernels.step_matmul(2 * W if sigmoid else W, B, steps=T)
            beta = 2.0 if sigmoid else 1.0
            minus_one = torch.full((), -1.0, dtype=xw.dtype, device=xw.device)
            out = torch.empty(T + 1, B, H, dtype=xw.dtype, device=xw.device)
            out[0] = h0
            h_low = out if low == xw.dtype else torch.empty_like(out, dtype=low)
            if h_low is not out:
                h_low[0] = h0
            for t in range(T):
                z = plus_matmul(h_low[t], xw[t], beta)
                if sigmoid:
                    torch.add(minus_one, torch.sigmoid_(z), alpha=2, out=out[t + 1])
                else:
                    torch.tanh(z, out=out[t + 1])
                if h_low is not out:
                    h_low[t + 1].copy_(out[t + 1])
        ctx.save_for_backward(out, h_low, W_hh)
        return out[1:]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        out, h_low, W_hh = ctx.saved_tensors
        T, B, H = grad_out.shape
        h = out[1:]
        with torch.autocast(grad_out.device.type, enabled=False):
            W = W_hh.to(h_low.dtype)
            plus_matmul = kernels.step_matmul(W.T, B, steps=T)
            dZ = torch.empty_like(h)
            dZ_low = dZ if h_low is out else torch.empty_like(dZ, dtype=h_low.dtype)
            dh = grad_out[T - 1]
            for t in range(T - 1, -1, -1):
                if t < T - 1:
                    dh = plus_matmul(dZ_low[t + 1], grad_out[t])
                torch.ops.aten.tanh_backward(dh, h[t], grad_input=dZ[t])  # dh * (1 - h^2)
                if dZ_low is not dZ:
                    dZ_low[t].copy_(dZ[t])
            dh0 = (dZ_low[0] @ W.T).to(dZ.dtype) if ctx.needs_input_grad[1] else None
            dW = (h_low[:-1].reshape(-1, H).T @ dZ_low.reshape(-1, H)).to(W_hh.dtype)
        return dZ, dh0, dW


class ScratchRNN(nn.Module):
    """The book's RNN: H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h), with a Python loop over time.

    `fast=True` (default) has the same math with less work: the one-hot product X_t W_xh is a row
    lookup of W_xh done for all steps at once, the bias is added there too, and the recurrence
    runs in `TanhRecurrence` with a hand-written backward. `fast=False` is the book written
    plainly: a one-hot matrix product at every step, autograd for the backward pass.
    `keep_prob` < 1 turns on Tallec & Ollivier's unbiased randomized truncation in training: at
    each step the gradient path through H is cut with probability 1 - keep_prob, and otherwise
    scaled by 1 / keep_prob, so the expected gradient equals the full gradient of the window.
    The state is still detached between windows, so nothing flows further back than with regular
    truncation (the gradient probe's through_time/beyond_window shows what both drop).
    Scoring without a graph in float32 (`native_eval`: validation, test, generation) runs the
    fast path's recurrence in torch's fused `rnn_tanh` with these weights.
    """

    def __init__(self, input_size: int, num_hiddens: int = 512, fast: bool = True,
                 sigma: float = 0.01):
        super().__init__()
        checks.core(num_hiddens=num_hiddens)  # before torch too
        self.input_size, self.num_hiddens, self.fast = input_size, num_hiddens, fast
        self.W_xh = nn.Parameter(torch.randn(input_size, num_hiddens) * sigma)
        self.W_hh = nn.Parameter(torch.randn(num_hiddens, num_hiddens) * sigma)
        self.b_h = nn.Parameter(torch.zeros(num_hiddens))
        self.keep_prob = 1.0

    def begin_state(self, batch_size: int) -> State:
        return (torch.zeros(batch_size, self.num_hiddens, device=self.W_hh.device),)

    def input_projection(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """X W_xh + b_h for all steps at once, or None in the book's per-step mode."""
        if inputs.is_floating_point():
            return inputs @ self.W_xh + self.b_h
        if self.fast:
            return F.embedding(inputs.long(), self.W_xh + self.b_h)  # bias added to 28 rows
        return None

    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        (H,) = state
        if self.fast and native_eval(inputs, H, self.W_hh):
            return tanh_native(inputs, H, self.input_size, self.W_xh.T, self.W_hh.T, self.b_h)
        xw = self.input_projection(inputs)
        keep = None
        if self.training and self.keep_prob < 1.0:  # drawn on the CPU: no device sync per step
            keep = (torch.rand(len(inputs)) < self.keep_prob).tolist()
        if xw is not None and keep is None:
            outputs = TanhRecurrence.apply(xw.to(H.dtype), H, self.W_hh)  # float32 under autocast
            return outputs, (outputs[-1],)
        outputs = []
        for t in range(len(inputs)):
            if keep is not None:
                H = H + (1 / self.keep_prob - 1) * (H - H.detach()) if keep[t] else H.detach()
            if xw is None:
                X = F.one_hot(inputs[t].long(), self.input_size).float()
                H = torch.tanh(X @ self.W_xh + H @ self.W_hh + self.b_h)
            else:
                H = torch.tanh(torch.addmm(xw[t], H, self.W_hh))
            outputs.append(H)
        return torch.stack(outputs), (H,)

    @torch.no_grad()
    def load_from_torch_rnn(self, rnn: nn.RNN) -> None:
        """Copy a 1-layer tanh `nn.RNN`'s weights (its two biases add up to our one)."""
        self.W_xh.copy_(rnn.weight_ih_l0.T)
        self.W_hh.copy_(rnn.weight_hh_l0.T)
        self.b_h.copy_(rnn.bias_ih_l0 + rnn.bias_hh_l0)


class TorchRNN(nn.Module):
    """`nn.RNN`, `nn.GRU` or `nn.LSTM` (cuDNN on a GPU) behind the same interface.

    `cpu_kernel="rnnlab"` (default) runs `rnn` on a CPU through `TanhRecurrence`: the same
    parameters and math (tanh, the two biases summed), without nn.RNN's CPU kernel's autograd
    step by step (benchmarks/bench.py measures both: its `rnn_torch_kernel` row).
    `cpu_kernel="torch"` keeps nn.RNN's own kernel. Scoring without a graph in float32
    (`native_eval`) uses nn.RNN's own kernel either way: a C++ loop, no per-step Python.
    """

    KINDS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

    def __init__(self, kind: str, input_size: int, num_hiddens: int = 512, num_layers: int = 1,
                 dropout: float = 0.0, weight_drop: float = 0.0, cpu_kernel: str = "rnnlab"):
        super().__init__()
        checks.core(kind, num_hiddens, num_layers, cpu_kernel)  # before torch too
        self.kind, self.input_size, self.cpu_kernel = kind, input_size, cpu_kernel
        self.num_hiddens, self.num_layers = num_hiddens, num_layers
        self.rnn = self.KINDS[kind](input_size, num_hiddens, num_layers,
                                    dropout=dropout if num_layers > 1 else 0.0)
        self.weight_drop = weight_drop  # AWD-LSTM's DropConnect on the recurrent matrices

    def begin_state(self, batch_size: int) -> State:
        weight = self.rnn.weight_hh_l0
        zeros = lambda: torch.zeros(self.num_layers, batch_size, self.num_hiddens,  # noqa: E731
                                    device=weight.device, dtype=weight.dtype)
        return (zeros(), zeros()) if self.kind == "lstm" else (zeros(),)

    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        dropped = {}
        if self.training and self.weight_drop:  # one dropped-out copy of W_hh per forward pass
            dropped = {f"weight_hh_l{i}": F.dropout(getattr(self.rnn, f"weight_hh_l{i}"),
                                                    self.weight_drop)
                       for i in range(self.num_layers)}
        if self.kind == "rnn" and self.cpu_kernel == "rnnlab" and inputs.device.type == "cpu":
            if not native_eval(inputs, state[0], self.rnn.weight_hh_l0):
                return self._tanh_layers(inputs, state[0], dropped)
            if self.num_layers == 1:
                r = self.rnn  # W_hh column-major, as ScratchRNN's: see tanh_native
                outputs, (h,) = tanh_native(inputs, state[0][0], self.input_size, r.weight_ih_l0,
                                            r.weight_hh_l0.T.contiguous().T,
                                            r.bias_ih_l0 + r.bias_hh_l0)
                return outputs, (h.unsqueeze(0),)
        if not inputs.is_floating_point():
            inputs = F.one_hot(inputs.long(), self.input_size).to(self.rnn.weight_hh_l0.dtype)
        hx = state if self.kind == "lstm" else state[0]
        if dropped:
            outputs, new_state = torch.func.functional_call(self.rnn, dropped, (inputs, hx))
        else:
            outputs, new_state = self.rnn(inputs, hx)
        return outputs, new_state if self.kind == "lstm" else (new_state,)

    def _tanh_layers(self, x: torch.Tensor, h0: torch.Tensor,
                     dropped: dict[str, torch.Tensor]) -> tuple[torch.Tensor, State]:
        """nn.RNN's forward, layer by layer, with the recurrence in `TanhRecurrence`."""
        last = []
        for i in range(self.num_layers):
            W_ih, b_ih, b_hh = (getattr(self.rnn, f"{name}_l{i}")
                                for name in ("weight_ih", "bias_ih", "bias_hh"))
            W_hh = dropped.get(f"weight_hh_l{i}", getattr(self.rnn, f"weight_hh_l{i}"))
            if x.is_floating_point():
                xw = F.linear(x, W_ih, b_ih + b_hh)
            else:  # one-hot input: the product is a row lookup (biases added to the rows)
                xw = F.embedding(x.long(), (W_ih.T + (b_ih + b_hh)).contiguous())
            x = TanhRecurrence.apply(xw.to(h0.dtype), h0[i], W_hh.T)  # float32 under autocast
            last.append(x[-1])
            if self.training and self.rnn.dropout and i < self.num_layers - 1:
                x = F.dropout(x, self.rnn.dropout)
        return x, (torch.stack(last),)


def detach_state(state: State) -> State:
    return tuple(s.detach() for s in state)
