"""The oneDNN CPU fast paths give what the plain torch ops give (values and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from rnnlab.kernels import onednn

needs_onednn = pytest.mark.skipif(not onednn.AVAILABLE, reason="torch built without oneDNN")


@needs_onednn
def test_step_matmul_equals_addmm():
    torch.manual_seed(0)
    W, a, c = torch.randn(64, 48), torch.randn(5, 64), torch.randn(5, 48)
    torch.testing.assert_close(onednn.step_matmul(W, rows=5)(a, c), torch.addmm(c, a, W))
    torch.testing.assert_close(onednn.step_matmul(W, rows=5)(a, c, 2.0),
                               torch.addmm(c, a, W, beta=2))
    torch.testing.assert_close(onednn.step_matmul(W.T, rows=5)(c, a), torch.addmm(a, c, W.T))


@needs_onednn
def test_linear_equals_f_linear_with_gradients():
    results = []
    for fn in (onednn.linear, F.linear):
        torch.manual_seed(0)
        x = torch.randn(70, 32, requires_grad=True)
        w = torch.randn(28, 32, requires_grad=True)
        b = torch.randn(28, requires_grad=True)
        torch.manual_seed(1)
        out = fn(x, w, b)
        (out * torch.randn_like(out)).sum().backward()
        results.append((out, x.grad, w.grad, b.grad))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_other_dtypes_fall_back_to_torch():
    x, w, b = (torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64),
               torch.randn(2, dtype=torch.float64))
    torch.testing.assert_close(onednn.linear(x, w, b), F.linear(x, w, b))
    W, a = torch.randn(3, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(onednn.step_matmul(W, rows=4)(a, a, 2.0),
                               torch.addmm(a, a, W, beta=2))
