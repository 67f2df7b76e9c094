"""Gradient clipping (D2L 8.5): the book's hand-written rule, and the norms it and the training
monitor compare to the threshold.

    norm = global_grad_norm([p.grad for p in params])   # ||g|| over all parameters
    clip_grad_norm_book(params, theta=1.0, norm=norm)   # g <- min(1, theta / ||g||) g
    max_abs_grad(grads)                                 # what value clipping compares instead
"""

from __future__ import annotations

import math

import torch
from torch import nn


def global_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def max_abs_grad(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(grads, math.inf)).max()


def clip_grad_norm_book(params: list[nn.Parameter], theta: float,
                        norm: torch.Tensor | None = None) -> torch.Tensor:
    """D2L's hand-written clipping: scale all gradients by min(1, theta / ||g||).
    The min is a tensor op, so the step never waits on the device to compare norms. `norm`, when
    the caller has it already, saves a second pass over the gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if norm is None:
        norm = torch.sqrt(sum(torch.sum(g * g) for g in grads))
    scale = torch.clamp(theta / norm, max=1.0)
    for g in grads:
        g.mul_(scale)
    return norm
