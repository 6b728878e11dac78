"""SSMLoRA's fused state update against its autograd reference (float64), gradcheck, ties, dtypes."""

from __future__ import annotations

import itertools

import pytest
import torch

from ssmlora_app.ssm.depth_state import DepthState, depth_state, depth_state_reference

R = 5
F64 = torch.float64


def inputs(first: bool, seed: int = 0, dtype: torch.dtype = F64):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(3, 4, R, generator=gen, dtype=dtype).requires_grad_()
    h_prev = None if first else torch.rand(3, 4, R, generator=gen, dtype=dtype).requires_grad_()
    W_c = (0.5 * torch.randn(R, R, generator=gen, dtype=dtype)).requires_grad_()
    W_d = (0.5 * torch.randn(R, R, generator=gen, dtype=dtype)).requires_grad_()
    return u, h_prev, W_c, W_d


def mask_for(u: torch.Tensor, p: float = 0.3, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(u.shape, generator=gen, dtype=u.dtype) >= p).to(u.dtype) / (1 - p)


CASES = list(
    itertools.product(["minmax", "layernorm", "none"], [True, False], [True, False], [True, False])
)


@pytest.mark.parametrize(("norm", "pass_normalised", "first", "dropout"), CASES)
def test_fused_equals_autograd_reference_in_float64(norm, pass_normalised, first, dropout):
    """Values and every gradient, including one flowing into the passed state (as with
    ``detach_state: false``), equal the plain autograd composition."""
    u, h_prev, W_c, W_d = inputs(first)
    mask = mask_for(u) if dropout else None
    kw = {"norm": norm, "eps": 1e-5, "pass_normalised": pass_normalised}
    fused = depth_state(u, h_prev, W_c, W_d, mask, **kw)
    ref = depth_state_reference(u, h_prev, W_c, W_d, mask, **kw)
    named = {"u": u, "h_prev": h_prev, "W_c": W_c, "W_d": W_d}
    named = {k: v for k, v in named.items() if v is not None}
    leaves = list(named.values())
    gen = torch.Generator().manual_seed(9)
    grads_out = [torch.randn(t.shape, generator=gen, dtype=F64) for t in ref]
    got = torch.autograd.grad(fused, leaves, grads_out)
    expected = torch.autograd.grad(ref, leaves, grads_out, allow_unused=True)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for name, a, b in zip(named, got, expected):
        if b is None:  # W_c at a chain's first position: autograd never saw it
            assert name == "W_c" and first and torch.equal(a, torch.zeros_like(a))
            continue
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.parametrize(("norm", "pass_normalised"), [("minmax", True), ("layernorm", False)])
@pytest.mark.parametrize("dropout", [True, False])
def test_gradcheck(norm, pass_normalised, dropout):
    u, h_prev, W_c, W_d = inputs(first=False, seed=3)
    mask = mask_for(u) if dropout else None

    def fn(u, h_prev, W_c, W_d):
        return DepthState.apply(u, h_prev, W_c, W_d, mask, norm, 1e-5, pass_normalised)

    assert torch.autograd.gradcheck(fn, (u, h_prev, W_c, W_d))


def test_ties_share_the_gradient_as_autograd_does():
    """At init W_c = W_d = 0: all r entries of h tie for both min and max (ĥ = 0, R = eps).
    The gradient must split equally among them, as autograd's aminmax does."""
    u, h_prev, W_c, W_d = inputs(first=False, seed=1)
    with torch.no_grad():
        W_c.zero_()
        W_d.zero_()
        h_prev.zero_()
    partial_tie = h_prev.detach().clone()
    partial_tie[..., :2] = 0.7  # two entries tie for the max, the other three for the min
    for prev in (h_prev, partial_tie.requires_grad_()):
        z, passed = depth_state(u, prev, W_c, W_d, None)
        z_ref, passed_ref = depth_state_reference(u, prev, W_c, W_d, None)
        loss, loss_ref = (z * z).sum() + passed.sum(), (z_ref * z_ref).sum() + passed_ref.sum()
        for a, b in zip(
            torch.autograd.grad(loss, (u, prev, W_c, W_d)),
            torch.autograd.grad(loss_ref, (u, prev, W_c, W_d)),
        ):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-12)


def test_no_graph_path_equals_the_node():
    u, h_prev, W_c, W_d = inputs(first=False, dtype=torch.float32)
    with_graph = depth_state(u, h_prev, W_c, W_d, None)
    with torch.no_grad():
        without = depth_state(u, h_prev, W_c, W_d, None)
    assert not without[0].requires_grad
    for a, b in zip(with_graph, without):
        assert torch.equal(a, b)


def test_low_precision_input_computes_in_fp32():
    """``u`` from a bf16 product: z comes back in bf16, the state stays fp32, autocast is off."""
    u, h_prev, W_c, W_d = inputs(first=False, dtype=torch.float32)
    u16 = u.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, passed = depth_state(u16, h_prev, W_c, W_d, None)
    ref_z, ref_passed = depth_state_reference(u16.float(), h_prev, W_c, W_d, None)
    assert z.dtype == torch.bfloat16 and passed.dtype == torch.float32
    torch.testing.assert_close(passed, ref_passed)
    torch.testing.assert_close(z, ref_z.bfloat16())
    z.float().sum().backward()
    assert u16.grad.dtype == torch.bfloat16 and W_d.grad.dtype == torch.float32


def test_saves_less_than_autograd():
    """Beyond its inputs and the state it passes on (which the chain holds anyway), the node
    keeps h and (N, 1) statistics; the autograd ops also keep h − min."""

    def extra_saved_bytes(fn):
        u, h_prev, W_c, W_d = (t.detach() for t in inputs(first=False, dtype=torch.float32))
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, passed = fn(u.requires_grad_(), h_prev, W_c.requires_grad_(), W_d, None)
        for held in (u, h_prev, W_c, W_d, passed):
            storages.pop(held.untyped_storage().data_ptr(), None)
        return sum(storages.values())

    assert extra_saved_bytes(depth_state) < extra_saved_bytes(depth_state_reference)
