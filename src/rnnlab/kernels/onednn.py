"""CPU matrix products through oneDNN, for the shapes a language-model step is made of.

    plus_matmul = step_matmul(W, rows=32)     # (a, c) -> c + a @ W, W reordered once
    logits = linear(outputs, head.weight, head.bias)

With a pre-reordered W, oneDNN's product can beat torch's MKL addmm on one CPU and lose on
another (the figures per CPU: docs/performance.md), which is why `kernels.choice` times both
against the plain torch ops before using them.
Both fall back to plain torch ops off the CPU, for other dtypes, under torch.compile, and in builds
without oneDNN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _works() -> bool:
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.eye(2), 1)
        x = torch.ones(1, 2)
        torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        torch.ops.mkldnn._linear_pointwise(x, torch.eye(2), None, "none", [], "")
        return True
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


AVAILABLE = _works()


def applies(*tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    """Whether these tensors can go through oneDNN here (and not through inductor's kernels)."""
    # under torch.compile inductor picks its own kernels: its lowering of these oneDNN ops only
    # takes weights frozen into the graph, not ones packed at every step (and it drops the alpha
    # of mm(...).add_(c, alpha), so the compiled path must be addmm)
    return (AVAILABLE and all(t.device.type == "cpu" and t.dtype in dtypes for t in tensors)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def step_matmul(W: torch.Tensor, rows: int) -> Callable[..., torch.Tensor]:
    """`(a, c, beta=1) -> beta * c + a @ W` for a W that a loop multiplies by at every step,
    `rows` = a's rows; a bf16 W (and a) with a float32 c gives a float32 result. The reorder is
    paid once per W and pays for itself within a few steps where the product is faster
    (`kernels.choice` measures whether it is). The add runs in place on the product's fresh,
    cache-resident result rather than as oneDNN's binary-add post-op, which reads c again.
    Elsewhere it is one addmm (one kernel on a GPU). Not differentiable: for use inside
    hand-written forward/backward passes."""
    if applies(W, dtypes=(torch.float32, torch.bfloat16)):
        packed = torch.ops.mkldnn._reorder_linear_weight(W.T.contiguous(), rows)
        low = W.dtype != torch.float32  # a bf16 product: the sum is kept in c's float32

        def plus_matmul(a: torch.Tensor, c: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
            product = torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
            return (product.float() if low else product).add_(c, alpha=beta)

        return plus_matmul
    return lambda a, c, beta=1.0: torch.addmm(c, a, W, beta=beta)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        dx = torch.ops.mkldnn._linear_pointwise(grad, weight.T.contiguous(), None, "none", [],
                                                "") if ctx.needs_input_grad[0] else None
        return dx, grad.T @ x, grad.sum(0)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight, bias) for a 2-d x; through oneDNN on a CPU."""
    if applies(x, weight, bias) and x.dim() == 2:
        return _Linear.apply(x.contiguous(), weight, bias)
    return F.linear(x, weight, bias)
