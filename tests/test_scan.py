"""The fast scans (chunked, FFT, auto) against the sequential reference, the decode step, complex
modes and autocast."""

from __future__ import annotations

import math

import pytest
import torch

from ssmlora_app.errors import SsmloraError
from ssmlora_app.ssm import lti_scan, lti_step
from ssmlora_app.ssm.scan import (
    AUTO_CHUNKED_FROM,
    choose_scan,
    chunk_size,
    decay_matrix,
    states_chunked,
    states_fft,
    states_sequential,
)

FAST = ("fft", "chunked", "auto")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def real_system(d: int, D: int, seed: int = 0):
    """A random stable real system like the trained adapter's: Ā in (0.9, 1), B̄ small."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.empty(d).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
    a = -torch.arange(1, d + 1, dtype=torch.float32)
    A_bar = torch.exp(dt * a)
    B_bar = ((A_bar - 1) / a)[:, None] * torch.randn(d, D, generator=g) / math.sqrt(D)
    C = torch.randn(D, d, generator=g) / math.sqrt(d)
    return A_bar, B_bar, C


def complex_system(d: int, D: int, seed: int = 0):
    """Random complex modes with |λ| < 1 and complex B̄, C."""
    g = torch.Generator().manual_seed(seed)
    radius = torch.empty(d).uniform_(0.5, 0.999, generator=g)
    angle = torch.empty(d).uniform_(-math.pi, math.pi, generator=g)
    A_bar = torch.polar(radius, angle)
    B_bar = torch.complex(torch.randn(d, D, generator=g), torch.randn(d, D, generator=g)) * 0.1
    C = torch.complex(torch.randn(D, d, generator=g), torch.randn(D, d, generator=g)) * 0.1
    return A_bar, B_bar, C


@pytest.mark.parametrize("method", FAST)
@pytest.mark.parametrize("length", [1, 7, 65, 512, 1500, 4096])
def test_fast_scans_match_sequential(length, method):
    A_bar, B_bar, C = real_system(d=8, D=6)
    u = torch.randn(2, length, 6, generator=torch.Generator().manual_seed(1))
    y_fast, s_fast = lti_scan(u, A_bar, B_bar, C, method=method)
    y_seq, s_seq = lti_scan(u, A_bar, B_bar, C, method="sequential")
    assert y_fast.shape == (2, length, 6) and y_fast.dtype == torch.float32
    assert rel_err(y_fast, y_seq) <= 1e-5
    assert rel_err(s_fast, s_seq) <= 1e-5


@pytest.mark.parametrize("method", ["fft", "chunked"])
def test_fast_scans_match_sequential_16k(method):
    A_bar, B_bar, C = real_system(d=4, D=2)
    u = torch.randn(1, 16384, 2, generator=torch.Generator().manual_seed(2))
    y_fast, _ = lti_scan(u, A_bar, B_bar, C, method=method)
    y_seq, _ = lti_scan(u, A_bar, B_bar, C, method="sequential")
    assert rel_err(y_fast, y_seq) <= 1e-5


@pytest.mark.parametrize("system", [real_system, complex_system])
@pytest.mark.parametrize("method", ["fft", "chunked"])
def test_float64_values_and_gradients_equal_the_recurrence(method, system):
    """In float64 every path is the recurrence to rounding, gradients included (the chunked
    path's through its decay matrices and the carry across chunks, 3 levels at L = 700)."""
    A_bar, B_bar, C = system(5, 3, seed=12)
    gen = torch.Generator().manual_seed(13)
    u = torch.randn(2, 700, 3, generator=gen, dtype=torch.float64)
    s0 = torch.randn(2, 5, generator=gen, dtype=torch.float64).to(
        torch.complex128 if A_bar.is_complex() else torch.float64
    )
    grads = []
    for m in (method, "sequential"):
        leaves = [t.detach().to(torch.promote_types(t.dtype, torch.float64)).requires_grad_()
                  for t in (u, A_bar, B_bar, C, s0)]  # fmt: skip
        y, last = lti_scan(*leaves[:4], state=leaves[4], method=m)
        assert y.dtype == torch.float64
        (y.square().sum() + last.abs().square().sum()).backward()
        grads.append([y.detach(), last.detach(), *(t.grad for t in leaves)])
    for got, ref in zip(*grads):
        assert rel_err(got, ref) <= 1e-11


@pytest.mark.parametrize("chunk", [1, 3, 8, 50, 64])
def test_chunked_any_chunk_size_and_padding(chunk):
    """Chunks that do not divide L (zero padding), chunk 1 (deep recursion), one chunk."""
    A_bar, _, _ = real_system(6, 2, seed=14)
    b = torch.randn(3, 50, 6, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    s0 = torch.randn(3, 6, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    ref = states_sequential(b, A_bar.double(), s0)
    got = states_chunked(b, A_bar.double(), s0, chunk=chunk)
    assert rel_err(got, ref) <= 1e-12


def test_chunk_size_and_decay_matrix():
    assert [chunk_size(n) for n in (1, 64, 128, 1024, 2048, 16384, 1 << 20)] == [
        8, 8, 16, 32, 64, 128, 128,
    ]  # fmt: skip
    log_A = torch.log(torch.tensor([0.5, 0.9, 1e-30]))
    K = decay_matrix(log_A, 5)
    assert K.shape == (3, 5, 5)
    assert torch.equal(K, K.triu()) and torch.equal(K.diagonal(dim1=1, dim2=2), torch.ones(3, 5))
    torch.testing.assert_close(K[0, 1, 4], torch.tensor(0.125))  # 0.5^(4-1)
    # a fast mode: Ā¹ = 1e-30 kept, Ā² = 1e-60 (below fp32's normal range) exactly 0
    assert K[2, 0, 1] > 0 and torch.isfinite(K).all() and not (K[2].triu(2) != 0).any()


def test_fast_modes_stay_exact_and_finite():
    """Ā near 0 (powers far below fp32's normal range) at every chunk level."""
    A_bar = torch.tensor([1e-20, 0.01, 0.5, 0.999])
    b = torch.randn(2, 5000, 4, generator=torch.Generator().manual_seed(17))
    ref = states_sequential(b, A_bar)
    for states in (states_chunked, states_fft):
        got = states(b, A_bar)
        assert torch.isfinite(got).all() and rel_err(got, ref) <= 1e-5


def test_auto_picks_per_length_and_system():
    assert choose_scan("auto", AUTO_CHUNKED_FROM, complex_=False) == "chunked"
    assert choose_scan("auto", AUTO_CHUNKED_FROM - 1, complex_=False) == "fft"
    assert choose_scan("auto", 1 << 14, complex_=True) == "fft"  # the reduced adapter's modes
    assert choose_scan("sequential", 1 << 14, complex_=False) == "sequential"
    assert choose_scan("auto", 1 << 14, complex_=False, device_type="cuda") == "fft"  # unmeasured
    A_bar, B_bar, C = real_system(4, 3)
    u = torch.randn(1, AUTO_CHUNKED_FROM, 3, generator=torch.Generator().manual_seed(18))
    assert torch.equal(
        lti_scan(u, A_bar, B_bar, C, method="auto")[0],
        lti_scan(u, A_bar, B_bar, C, method="chunked")[0],
    )


def test_chunked_gradient_reaches_the_input_contiguous():
    """The layout guard: ∂L/∂u comes back as a plain (B, L, D) tensor, not a transposed view
    (which made the input projection's backward copy the whole gradient)."""
    A_bar, B_bar, C = real_system(4, 3)
    u = torch.randn(2, 100, 3, generator=torch.Generator().manual_seed(19), requires_grad=True)
    b = u @ B_bar.T
    b.retain_grad()
    (states_chunked(b, A_bar) @ C.T).sum().backward()
    assert b.grad.is_contiguous() and u.grad.is_contiguous()


def test_matches_float64_recurrence():
    A_bar, B_bar, C = real_system(d=5, D=3, seed=3)
    u = torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(4))
    s = torch.zeros(2, 5, dtype=torch.float64)
    ref = []
    for t in range(300):
        s = A_bar.double() * s + u[:, t].double() @ B_bar.double().T
        ref.append(s @ C.double().T)
    y, _ = lti_scan(u, A_bar, B_bar, C)
    assert rel_err(y.double(), torch.stack(ref, 1)) <= 1e-5


@pytest.mark.parametrize("system", [real_system, complex_system])
def test_step_and_chunks_reproduce_full_scan(system):
    A_bar, B_bar, C = system(6, 4)
    u = torch.randn(3, 40, 4, generator=torch.Generator().manual_seed(5))
    y_full, s_full = lti_scan(u, A_bar, B_bar, C)
    # prefill 25 tokens with the FFT, then one token at a time, carrying the state
    y_pre, state = lti_scan(u[:, :25], A_bar, B_bar, C)
    steps = [y_pre]
    for u_t in u[:, 25:].unbind(1):
        y_t, state = lti_step(u_t, state, A_bar, B_bar, C)
        steps.append(y_t[:, None])
    assert rel_err(torch.cat(steps, 1), y_full) <= 1e-5
    assert rel_err(state, s_full) <= 1e-5
    # two FFT chunks with the state carried equal one
    y_a, s_a = lti_scan(u[:, :13], A_bar, B_bar, C)
    y_b, _ = lti_scan(u[:, 13:], A_bar, B_bar, C, state=s_a)
    assert rel_err(torch.cat([y_a, y_b], 1), y_full) <= 1e-5
    # the step from a zero state is the first token of the scan
    y_0, _ = lti_step(u[:, 0], None, A_bar, B_bar, C)
    assert rel_err(y_0, y_full[:, 0]) <= 1e-5


@pytest.mark.parametrize("length", [7, 1000])
def test_complex_modes_fft_matches_sequential(length):
    A_bar, B_bar, C = complex_system(8, 5)
    u = torch.randn(2, length, 5, generator=torch.Generator().manual_seed(6))
    y_fft, _ = lti_scan(u, A_bar, B_bar, C, method="fft")
    y_seq, _ = lti_scan(u, A_bar, B_bar, C, method="sequential")
    assert not y_fft.is_complex()
    assert rel_err(y_fft, y_seq) <= 1e-5


def test_conjugate_pair_equals_real_system():
    """A real 2x2 rotation-decay block, diagonalised into a conjugate pair, gives the same y."""
    rho, theta = 0.95, 0.3
    A = torch.tensor([[rho * math.cos(theta), -rho * math.sin(theta)],
                      [rho * math.sin(theta), rho * math.cos(theta)]], dtype=torch.float64)  # fmt: skip
    B = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    C = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    lam, V = torch.linalg.eig(A)
    Bm, Cm = torch.linalg.solve(V, B.to(V.dtype)), C.to(V.dtype) @ V
    u = torch.randn(1, 50, 3, generator=torch.Generator().manual_seed(9))
    s, ref = torch.zeros(2, dtype=torch.float64), []
    for u_t in u[0].double().unbind(0):
        s = A @ s + B @ u_t
        ref.append(C @ s)
    y, _ = lti_scan(u, lam.to(torch.complex64), Bm.to(torch.complex64), Cm.to(torch.complex64))
    assert rel_err(y[0].double(), torch.stack(ref)) <= 1e-5


def test_bf16_autocast_input():
    A_bar, B_bar, C = real_system(8, 6)
    u = torch.randn(2, 64, 6, generator=torch.Generator().manual_seed(10)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = lti_scan(u, A_bar, B_bar, C)
        y_t, _ = lti_step(u[:, 0], None, A_bar, B_bar, C)
    assert y.dtype == torch.bfloat16 and y_t.dtype == torch.bfloat16
    assert state.dtype == torch.float32
    y_ref, _ = lti_scan(u.float(), A_bar, B_bar, C, method="sequential")
    assert rel_err(y.float(), y_ref) <= 1e-2


def test_gradients_match_between_paths():
    A_bar, B_bar, C = real_system(4, 3)
    u = torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(11))
    grads = []
    for method in ("fft", "sequential"):
        params = [t.clone().requires_grad_(True) for t in (u, A_bar, B_bar, C)]
        y, _ = lti_scan(*params, method=method)
        y.square().sum().backward()
        grads.append([p.grad for p in params])
    for g_fft, g_seq in zip(*grads):
        assert rel_err(g_fft, g_seq) <= 1e-4


def test_bad_method():
    A_bar, B_bar, C = real_system(2, 2)
    with pytest.raises(SsmloraError, match="Unknown scan"):
        lti_scan(torch.zeros(1, 3, 2), A_bar, B_bar, C, method="parallel")
