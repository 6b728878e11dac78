"""Products with thin matrices: rank_major / thin_matmul change only the memory order, never a
value or a gradient; add_product_ adds a scaled product in place with the plain sum's gradients."""

import pytest
import torch

from ssmlora_app.linalg import add_product_, rank_major, thin_matmul


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


def _product_case(out_dtype, a_dtype, w_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(3, 5, 12, generator=gen).to(out_dtype)
    a = torch.randn(3, 5, 4, generator=gen).to(a_dtype).requires_grad_()
    w = torch.randn(4, 12, generator=gen).to(w_dtype).requires_grad_()
    return out, a, w


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_add_product_is_one_gemm_with_the_gradients_of_the_plain_sum(dtype):
    out, a, w = _product_case(dtype, dtype, dtype)
    base = out.clone().requires_grad_()
    result = add_product_(base * 1, a, w, alpha=2.0)  # base * 1: a fresh buffer with a graph
    expected = base + 2.0 * (a @ w)
    g = torch.randn_like(expected)
    got = torch.autograd.grad(result, (base, a, w), g)
    ref = torch.autograd.grad(expected, (base, a, w), g)
    tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(result, expected, **tol)
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, **tol)


def test_add_product_writes_into_out_and_keeps_zero_exact():
    out, a, w = _product_case(torch.float32, torch.float32, torch.float32)
    before = out.clone()
    with torch.no_grad():
        assert add_product_(out, a, w.zero_(), alpha=8.0) is out
    assert torch.equal(out, before)  # W_b = 0 at init: bitwise the base output


def test_add_product_mixed_dtypes_without_autocast_multiplies_in_the_weight_dtype():
    """An fp32 adapter on a bf16 layer (no autocast): the product runs in fp32, then is cast."""
    out, a, w = _product_case(torch.bfloat16, torch.float32, torch.float32)
    expected = out + (2.0 * (a @ w)).bfloat16()
    got = add_product_(out.clone(), a, w, alpha=2.0)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)


def test_add_product_under_autocast_casts_the_weight_as_autocast_would():
    out, a, w = _product_case(torch.bfloat16, torch.bfloat16, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = add_product_(out.clone(), a, w, alpha=2.0)
        expected = out + 2.0 * (a @ w)  # autocast: the product in bf16
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)
    got.float().sum().backward()
    assert w.grad.dtype == torch.float32 and a.grad.dtype == torch.bfloat16
