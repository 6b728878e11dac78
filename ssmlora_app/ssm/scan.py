"""Diagonal LTI scan: two exact fast paths (chunked, FFT), a sequential reference, a decode step.

The system of the HRM paper's adapter, with ``Ā`` diagonal and time-invariant::

    s_t = Ā ⊙ s_{t-1} + B̄ u_t,   s_{-1} = s0 (zero unless carried over)
    y_t = Re(C s_t)

``Ā (d,)`` is real in ``(0, 1)`` for the trained adapter, or complex with ``|Ā| < 1`` for the
modal form of a reduced adapter (then ``B̄``, ``C`` are complex and the output is the real part).

Because ``Ā`` is time-invariant, ``s = k ⊛ b`` with ``b_t = B̄ u_t`` and kernel ``k_t = Ā^t``;
the initial state adds ``Ā^{t+1} ⊙ s0``. Two exact ways to compute it:

* ``fft``: the causal convolution by FFT with zero padding to ``n ≥ 2L`` (so the circular
  convolution equals the linear one), ``O(B·d·L log L)``;
* ``chunked``: real arithmetic only: a ``(T × T)`` decay matrix per channel within chunks of
  ``T ≈ √L`` tokens (batched products) and the same recurrence across chunk ends,
  ``O(B·d·L·T)`` with few, large kernels.

``auto`` picks per length (:func:`choose_scan`); ``sequential`` is the recurrence itself, the
oracle of the tests. Every function computes in fp32/complex64 (fp64/complex128 for double
inputs) with autocast disabled (torch's FFT has no bf16) and casts ``y`` back to the input's
dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssmlora_app.errors import SsmloraError
from ssmlora_app.linalg import thin_matmul

SCAN_METHODS = ("auto", "chunked", "fft", "sequential")
"""Names of the scan implementations: ``chunked`` and ``fft`` (exact fast paths), ``sequential``
(the reference), ``auto`` (the faster fast path for the system and length, see
:func:`choose_scan`)."""


def chunk_size(length: int) -> int:
    """Tokens per chunk of :func:`states_chunked` for ``length`` tokens: the power of two nearest
    above ``√length``, within [8, 128]. The decay matrix then holds about as many numbers per
    channel (``T²``) as the sequence (``L``), and the intra-chunk products cost ``O(B·L·T·d)``:
    a fixed large ``T`` made the ``(d, T, T)`` matrix, not the data, the cost at short ``L``."""
    half_log2 = ((max(length, 1) - 1).bit_length() + 1) // 2  # ⌈log₂ √L⌉
    return max(8, min(128, 1 << half_log2))


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
        dtype = _state_dtype(s, C)
        s, C = s.to(dtype), C.to(dtype)
        return s.real @ C.real.T - s.imag @ C.imag.T
    return thin_matmul(s, C.T)  # C rank-major: a faster backward on CPU (see linalg)


def _state_dtype(A_bar: Tensor, B_bar: Tensor) -> torch.dtype:
    """fp32 or complex64; fp64 or complex128 when an input is double (reference tests)."""
    double = any(t.dtype in (torch.float64, torch.complex128) for t in (A_bar, B_bar))
    if A_bar.is_complex() or B_bar.is_complex():
        return torch.complex128 if double else torch.complex64
    return torch.float64 if double else torch.float32


UNDERFLOW = -80.0
"""Real exponents below this give powers of exactly 0 (``e^-80 ≈ 1.8e-35``, far below fp32's
resolution of any state). Without the cut, ``Ā^k`` for a fast mode passes through fp32's
subnormal range (exponents −87 … −104), where every multiply runs many times slower on x86:
it made the decay matrix's ``exp``, ``triu`` and their backward 10× slower here."""


def _exp(x: Tensor) -> Tensor:
    """``exp(x)``, with real ``x < UNDERFLOW`` flushed to exactly 0 (see :data:`UNDERFLOW`)."""
    if x.is_complex():
        return torch.exp(x)
    return torch.exp(x.masked_fill(x < UNDERFLOW, -math.inf))


def kernel(A_bar: Tensor, length: int) -> Tensor:
    """Impulse kernel of the diagonal recurrence: ``k_t = Ā^t``, ``(length, d)``.

    Computed as ``exp(t · log Ā)`` (no repeated products, so no error growth in ``t``).
    """
    t = torch.arange(length, device=A_bar.device, dtype=torch.float32)[:, None]  # (L, 1)
    log_A = torch.log(A_bar.to(_state_dtype(A_bar, A_bar)))  # (d,)
    return _exp(t * log_A)  # (L, d)


def states_fft(b: Tensor, A_bar: Tensor, s0: Tensor | None = None) -> Tensor:
    """States ``s (B, L, d)`` of ``s_t = Ā s_{t-1} + b_t`` by FFT causal convolution.

    ``b (B, L, d)``, ``Ā (d,)``, ``s0 (B, d)`` or None. Real inputs use ``rfft``; complex ones
    ``fft``. Padding to ``n ≥ 2L`` makes the product of spectra a linear convolution.
    """
    length = b.shape[1]
    n = _fft_size(length)
    k = kernel(A_bar, length)  # (L, d)
    if b.is_complex() or k.is_complex():
        b, k = b.to(_state_dtype(b, k)), k.to(_state_dtype(b, k))
        spec = torch.fft.fft(k, n=n, dim=0) * torch.fft.fft(b, n=n, dim=1)  # (B, n, d)
        s = torch.fft.ifft(spec, n=n, dim=1)[:, :length]  # (B, L, d)
    else:
        spec = torch.fft.rfft(k, n=n, dim=0) * torch.fft.rfft(b, n=n, dim=1)  # (B, n//2+1, d)
        s = torch.fft.irfft(spec, n=n, dim=1)[:, :length]  # (B, L, d)
    if s0 is not None:
        s = s + (k * A_bar.to(k.dtype)) * s0.to(s.dtype)[:, None, :]  # Ā^{t+1} s0
    return s


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous.

    The chunked scan works channel-major, ``(d, B, L)``, between two layout changes. Without
    this at its entry the gradient reaching the input projection ``b = u B̄ᵀ`` would be a
    transposed view, and the ``mm`` backward would write ``∂L/∂u`` transposed and copy the whole
    ``(B, L, D)`` gradient; at its exit, the batched products' backward would get a strided
    gradient and loop over the channels. With it only thin ``(B, L, d)`` gradients are copied.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


def decay_matrix(log_A: Tensor, size: int) -> Tensor:
    """Upper-triangular decay ``K[:, j, t] = Ā^(t−j) = exp((t−j)·log Ā)`` for ``t ≥ j``, else 0:
    ``(d, size, size)`` from ``log Ā (d,)``, so that ``s = b K`` per channel for row vectors
    ``b, s (…, size)``. The exponent is clamped at 0 below the diagonal before ``exp``
    (``Ā^(−k)`` of a fast mode would overflow), and ``triu`` zeroes those entries."""
    t = torch.arange(size, device=log_A.device)
    lag = (t[None, :] - t[:, None]).clamp_(min=0)  # (T, T): t − j at [j, t], 0 below
    return _exp(lag * log_A[:, None, None]).triu()  # (d, T, T)


def states_chunked(
    b: Tensor, A_bar: Tensor, s0: Tensor | None = None, chunk: int | None = None
) -> Tensor:
    """States ``s (B, L, d)`` of ``s_t = Ā s_{t−1} + b_t`` in chunks of ``T`` tokens
    (``chunk``, or :func:`chunk_size` of the length at each level when None).

    Exact, with real arithmetic for a real system (no transform): within a chunk the states
    from a zero start are one batched product with the decay matrix,
    ``s[c, t] = Σ_{j≤t} Ā^(t−j) b[c, j]`` (:func:`decay_matrix`, ``O(B·L·T·d)`` as ``d``
    products of ``(B·L/T, T) × (T, T)``); the state entering chunk ``c`` is the end state of
    chunk ``c − 1``, itself the same recurrence over chunks with decay ``Ā^T`` (solved
    recursively on the ``L/T`` chunk ends), and adds ``Ā^(t+1) ⊙ s_in[c]`` at position ``t``
    of chunk ``c``. ``b (B, L, d)``, ``Ā (d,)``, ``s0 (B, d)`` or None. Runs channel-major
    (``(d, B, L)``, contiguous rows of tokens per channel).
    """
    dtype = _state_dtype(A_bar, b)
    b_cm = _ContiguousGrad.apply(b.to(dtype)).permute(2, 0, 1).contiguous()  # (d, B, L)
    s0_cm = None if s0 is None else s0.to(dtype).T  # (d, B)
    s_cm = _chunked(b_cm, torch.log(A_bar.to(dtype)), s0_cm, chunk)
    # Contiguous (B, L, d), as a product gives: the output projection's backward then writes
    # ∂L/∂s in this layout instead of transposing the (B, L, D) gradient to match a view; and
    # the gradient comes back channel-major contiguous, as the batched products want it.
    return _ContiguousGrad.apply(s_cm).permute(1, 2, 0).contiguous()


def _chunked(b: Tensor, log_A: Tensor, s0: Tensor | None, chunk: int | None) -> Tensor:
    """:func:`states_chunked` channel-major: ``b (d, N, L)``, ``log Ā (d,)``, ``s0 (d, N)``;
    returns ``s (d, N, L)``. The chunk level's decay ``Ā^T`` enters as ``T·log Ā`` (no ``log``
    of a power that may underflow to 0)."""
    d, n, length = b.shape
    size = min(chunk or chunk_size(length), length)
    n_chunks = -(-length // size)
    if n_chunks * size != length:  # zeros after the last token change no state before it
        b = torch.nn.functional.pad(b, (0, n_chunks * size - length))
    K = decay_matrix(log_A, size).to(b.dtype)  # (d, T, T)
    s = torch.bmm(b.reshape(d, n * n_chunks, size), K).view(d, n, n_chunks, size)
    if n_chunks > 1 or s0 is not None:
        start = torch.zeros_like(s[:, :, 0, 0]) if s0 is None else s0.to(s.dtype)  # (d, N)
        entering = start[:, :, None]  # (d, N, 1): the state entering chunk 0
        if n_chunks > 1:  # the true end states of chunks 0 .. nc−2, carried across chunks
            carried = _chunked(s[:, :, :-1, -1], size * log_A, s0, chunk)  # (d, N, nc − 1)
            entering = torch.cat([entering, carried], dim=2)  # (d, N, nc)
        # position t of a chunk adds Ā^(t+1) s_in = Ā^t (Ā s_in), with Ā^t = K[:, 0, t]
        A_bar = _exp(log_A).to(s.dtype)[:, None, None, None]
        s = torch.addcmul(s, K[:, None, None, 0, :], entering[..., None] * A_bar)
    return s.reshape(d, n, n_chunks * size)[..., :length]


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


_STATES = {"chunked": states_chunked, "fft": states_fft, "sequential": states_sequential}


AUTO_CHUNKED_FROM = 1024
"""``auto`` runs real systems of at least this many tokens chunked on CPU, shorter ones by FFT."""


def choose_scan(method: str, length: int, complex_: bool, device_type: str = "cpu") -> str:
    """The implementation ``method`` names; for ``auto`` the faster exact one as measured
    (``docs/benchmarks.md``): on CPU ``chunked`` for real systems from
    :data:`AUTO_CHUNKED_FROM` tokens, ``fft`` below. Complex modes (a reduced adapter) keep the
    FFT path, and so do devices where the two have not been compared yet (CUDA: the GPU check's
    ``scan_chunked`` and ``scan_fft`` bench rows measure it)."""
    if method != "auto":
        return method
    chunked = device_type == "cpu" and not complex_ and length >= AUTO_CHUNKED_FROM
    return "chunked" if chunked else "fft"


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
        method: one of :data:`SCAN_METHODS` (``sequential`` is the reference).

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
        C = C.to(_state_dtype(C, C))
        complex_ = A.is_complex() or B.is_complex() or C.is_complex()
        run = _STATES[choose_scan(method, u.shape[1], complex_, u.device.type)]
        b = _project_in(u.to(torch.promote_types(u.dtype, torch.float32)), B)  # (B, L, d)
        s = run(b, A, state)  # (B, L, d)
        y = _project_out(s, C)  # (B, L, D)
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
