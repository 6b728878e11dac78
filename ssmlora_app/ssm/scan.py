"""Minimal diagonal LTI scan: an exact FFT path, a sequential reference, and a decode step.

The system of the HRM paper's adapter, with ``Ā`` diagonal and time-invariant::

    s_t = Ā ⊙ s_{t-1} + B̄ u_t,   s_{-1} = s0 (zero unless carried over)
    y_t = Re(C s_t)

``Ā (d,)`` is real in ``(0, 1)`` for the trained adapter, or complex with ``|Ā| < 1`` for the
modal form of a reduced adapter (then ``B̄``, ``C`` are complex and the output is the real part).

Because ``Ā`` is time-invariant, ``s = k ⊛ b`` with ``b_t = B̄ u_t`` and kernel ``k_t = Ā^t``;
the initial state adds ``Ā^{t+1} ⊙ s0``. The FFT path computes the causal convolution in fp32
with zero padding to ``n ≥ 2L`` (so the circular FFT convolution equals the linear one),
``O(B·d·L log L)``. Every function computes in fp32/complex64 with autocast disabled (torch's FFT
has no bf16) and casts ``y`` back to the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssmlora_app.errors import SsmloraError
from ssmlora_app.linalg import thin_matmul

SCAN_METHODS = ("fft", "sequential")
"""Names of the scan implementations (``fft`` fast path, ``sequential`` reference)."""


def _fft_size(length: int) -> int:
    """Smallest power of two ``≥ 2·length`` (linear, not circular, convolution; fast FFT sizes)."""
    return 1 << max(1, (2 * length - 1).bit_length())


def _project_in(u: Tensor, B_bar: Tensor) -> Tensor:
    """``b_t = B̄ u_t``: ``u (..., D)``, ``B̄ (d, D)`` -> ``(..., d)`` (complex if ``B̄`` is)."""
    if B_bar.is_complex():
        return torch.complex(u @ B_bar.real.T, u @ B_bar.imag.T)
    return u @ B_bar.T


def _project_out(s: Tensor, C: Tensor) -> Tensor:
    """``y_t = Re(C s_t)``: ``s (..., d)``, ``C (D, d)`` -> ``(..., D)`` real."""
    if s.is_complex() or C.is_complex():
        s, C = s.to(torch.complex64), C.to(torch.complex64)
        return s.real @ C.real.T - s.imag @ C.imag.T
    return thin_matmul(s, C.T)  # C rank-major: a faster backward on CPU (see linalg)


def _state_dtype(A_bar: Tensor, B_bar: Tensor) -> torch.dtype:
    complex_ = A_bar.is_complex() or B_bar.is_complex()
    return torch.complex64 if complex_ else torch.float32


def kernel(A_bar: Tensor, length: int) -> Tensor:
    """Impulse kernel of the diagonal recurrence: ``k_t = Ā^t``, ``(length, d)``.

    Computed as ``exp(t · log Ā)`` (no repeated products, so no error growth in ``t``).
    """
    t = torch.arange(length, device=A_bar.device, dtype=torch.float32)[:, None]  # (L, 1)
    log_A = torch.log(A_bar.to(_state_dtype(A_bar, A_bar)))  # (d,)
    return torch.exp(t * log_A)  # (L, d)


def states_fft(b: Tensor, A_bar: Tensor, s0: Tensor | None = None) -> Tensor:
    """States ``s (B, L, d)`` of ``s_t = Ā s_{t-1} + b_t`` by FFT causal convolution.

    ``b (B, L, d)``, ``Ā (d,)``, ``s0 (B, d)`` or None. Real inputs use ``rfft``; complex ones
    ``fft``. Padding to ``n ≥ 2L`` makes the product of spectra a linear convolution.
    """
    length = b.shape[1]
    n = _fft_size(length)
    k = kernel(A_bar, length)  # (L, d)
    if b.is_complex() or k.is_complex():
        b, k = b.to(torch.complex64), k.to(torch.complex64)
        spec = torch.fft.fft(k, n=n, dim=0) * torch.fft.fft(b, n=n, dim=1)  # (B, n, d)
        s = torch.fft.ifft(spec, n=n, dim=1)[:, :length]  # (B, L, d)
    else:
        spec = torch.fft.rfft(k, n=n, dim=0) * torch.fft.rfft(b, n=n, dim=1)  # (B, n//2+1, d)
        s = torch.fft.irfft(spec, n=n, dim=1)[:, :length]  # (B, L, d)
    if s0 is not None:
        s = s + (k * A_bar.to(k.dtype)) * s0.to(s.dtype)[:, None, :]  # Ā^{t+1} s0
    return s


def states_sequential(b: Tensor, A_bar: Tensor, s0: Tensor | None = None) -> Tensor:
    """Reference for :func:`states_fft`: the recurrence, one step per token.

    Iterates over ``b.unbind(1)`` (not ``b[:, t]`` slicing, whose backward is quadratic in L).
    """
    dtype = _state_dtype(A_bar, b)
    A, b = A_bar.to(dtype), b.to(dtype)
    s = torch.zeros_like(b[:, 0]) if s0 is None else s0.to(dtype)  # (B, d)
    out = []
    for b_t in b.unbind(1):  # each (B, d)
        s = A * s + b_t
        out.append(s)
    return torch.stack(out, dim=1)  # (B, L, d)


def lti_scan(
    u: Tensor,
    A_bar: Tensor,
    B_bar: Tensor,
    C: Tensor,
    state: Tensor | None = None,
    method: str = "fft",
) -> tuple[Tensor, Tensor]:
    """Run the diagonal LTI system over a sequence.

    Args:
        u: Input ``(B, L, D)``, any float dtype.
        A_bar: Discrete diagonal dynamics ``(d,)``, real or complex.
        B_bar: Input matrix ``(d, D)``, real or complex.
        C: Output matrix ``(D, d)``, real or complex.
        state: State ``(B, d)`` before the first token (None: zeros).
        method: ``fft`` or ``sequential`` (the reference).

    Returns:
        ``y (B, L, D)`` in ``u``'s dtype, and the last state ``(B, d)`` (fp32 or complex64), to be
        passed as ``state`` to continue the sequence.
    """
    if method not in SCAN_METHODS:
        raise SsmloraError(f"Unknown scan {method!r}; use one of {SCAN_METHODS}.")
    if u.shape[1] == 0:
        raise SsmloraError("lti_scan needs at least one token (u has length 0).")
    with torch.autocast(device_type=u.device.type, enabled=False):
        A = A_bar.to(_state_dtype(A_bar, A_bar))
        B = B_bar.to(_state_dtype(B_bar, B_bar))
        b = _project_in(u.float(), B)  # (B, L, d)
        run = states_fft if method == "fft" else states_sequential
        s = run(b, A, state)  # (B, L, d)
        y = _project_out(s, C.to(_state_dtype(C, C)))  # (B, L, D)
    return y.to(u.dtype), s[:, -1]


def lti_step(
    u_t: Tensor, state: Tensor | None, A_bar: Tensor, B_bar: Tensor, C: Tensor
) -> tuple[Tensor, Tensor]:
    """One decode step: ``s = Ā s + B̄ u_t``, ``y_t = Re(C s)``.

    ``u_t (B, D)``, ``state (B, d)`` or None (zeros). Returns ``y_t (B, D)`` in ``u_t``'s dtype
    and the new state, which the caller carries to the next step (as a KV cache is carried).
    """
    with torch.autocast(device_type=u_t.device.type, enabled=False):
        dtype = _state_dtype(A_bar, B_bar)
        b = _project_in(u_t.float(), B_bar.to(_state_dtype(B_bar, B_bar))).to(dtype)  # (B, d)
        s = b if state is None else A_bar.to(dtype) * state.to(dtype) + b  # (B, d)
        y = _project_out(s, C.to(_state_dtype(C, C)))  # (B, D)
    return y.to(u_t.dtype), s
