"""rank_major / thin_matmul: only the memory order changes, never a value or a gradient."""

import pytest
import torch

from ssmlora_app.linalg import rank_major, thin_matmul


@pytest.mark.parametrize("shape", [(48, 4), (4, 48), (6, 6)])
def test_rank_major_keeps_values_and_puts_the_rank_outermost(shape):
    w = torch.randn(*shape)
    out = rank_major(w)
    assert out.shape == w.shape and torch.equal(out, w)
    r = min(shape)
    # the rank axis has the largest stride: the (r, other) matrix is contiguous in memory
    rank_axis = 0 if shape[0] == r else 1
    assert out.stride(rank_axis) == max(shape) and out.stride(1 - rank_axis) == 1


def test_rank_major_copies_only_when_needed():
    up = torch.randn(4, 48)
    assert rank_major(up).data_ptr() == up.data_ptr()
    down = torch.randn(4, 48).t()  # (48, 4) already stored rank-major
    assert rank_major(down).data_ptr() == down.data_ptr()


@pytest.mark.parametrize("shape", [(48, 4), (4, 48)])
def test_thin_matmul_equals_matmul_with_gradients(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, shape[0], generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, shape[1], generator=gen, dtype=torch.float64)
    fast = thin_matmul(x, w)
    gx, gw = torch.autograd.grad(fast, (x, w), g)
    ref = x @ w
    rx, rw = torch.autograd.grad(ref, (x, w), g)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    assert gw.shape == w.shape
