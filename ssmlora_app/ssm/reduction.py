"""Balanced truncation of a diagonal discrete LTI system, kept in modal (diagonal) form (the HRM
paper's Hankel reduced-order model; the error bound is Glover's).

For ``s_t = diag(a) s_{t−1} + B u_t``, ``y_t = C s_t`` with ``a = Ā (d,)``, ``|a| < 1``, in float64:

1. Gramians in closed form (the diagonal Stein equations ``W = A W Aᵀ + B Bᵀ``)::

       Wc_ij = (B Bᵀ)_ij / (1 − a_i a_j),     Wo_ij = (Cᵀ C)_ij / (1 − a_i a_j)

   or, empirically, ``Wc = E[s_t s_tᵀ]`` over states driven by real inputs and ``Wo =
   E[λ_t λ_tᵀ]`` over the adjoint states driven by the loss gradient (with white unit inputs
   these expectations *are* the closed forms, so both are on the same scale).
2. Cholesky ``Wc = Lc Lcᵀ``, ``Wo = Lo Loᵀ``; SVD ``Lcᵀ Lo = U Σ Vᵀ``; Hankel singular values
   ``σ = diag Σ``.
3. ``T = Lc U Σ^{-1/2}``, ``T⁻¹ = Σ^{-1/2} Vᵀ Loᵀ``; order ``d̂ = #{σ_i/σ_1 ≥ ε}``;
   ``Â = T⁻¹[:d̂] diag(a) T[:, :d̂]``, ``B̂ = T⁻¹[:d̂] B``, ``Ĉ = C T[:, :d̂]``.
4. Glover: ``‖G − Ĝ‖_H∞ ≤ 2 Σ_{i>d̂} σ_i`` (closed-form Gramians only).
5. ``Â = V Λ V⁻¹``: complex modes ``λ``, ``B̂ ← V⁻¹ B̂``, ``Ĉ ← Ĉ V``, ``|λ| ≥ 1`` pulled to
   ``1 − 1e−6``; of each conjugate pair only one mode is kept, with ``2Ĉ`` (``y = Re(·)`` gives
   back the pair's sum), and real modes are stored real, so the modal form has exactly ``d̂``
   rows of ``B̂`` and runs through the same FFT scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssmlora_app.errors import SsmloraError

STABLE_RADIUS = 1 - 1e-6
"""Modes with ``|λ| ≥ 1`` after diagonalisation are pulled to this radius."""


def gramians(a: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form controllability and observability Gramians ``(d, d)`` of the diagonal system
    ``a (d,)``, ``B (d, D)``, ``C (D, d)``, in float64."""
    a, B, C = a.double(), B.double(), C.double()
    denom = 1 - a[:, None] * a[None, :]  # (d, d)
    return (B @ B.T) / denom, (C.T @ C) / denom


def psd_factor(W: Tensor) -> Tensor:
    """``L`` with ``W = L Lᵀ``: Cholesky, or (for a numerically singular ``W``, common for
    Gramians, which are Cauchy-like and ill-conditioned) the symmetric square root from ``eigh``."""
    W = (W + W.T) / 2
    L, info = torch.linalg.cholesky_ex(W)
    if int(info) == 0 and torch.isfinite(L).all():
        return L
    vals, vecs = torch.linalg.eigh(W)
    return vecs * vals.clamp(min=0).sqrt()


@dataclass
class BalancedTruncation:
    """A reduced dense system and the Hankel singular values it was cut at."""

    A: Tensor
    """``Â (d̂, d̂)``, float64."""
    B: Tensor
    """``B̂ (d̂, D)``."""
    C: Tensor
    """``Ĉ (D, d̂)``."""
    hsv: Tensor
    """Hankel singular values ``σ (d,)`` of the full system, descending."""

    @property
    def order(self) -> int:
        return self.A.shape[0]

    @property
    def error_bound(self) -> float:
        """Glover's bound ``2 Σ_{i>d̂} σ_i`` on ``‖G − Ĝ‖_H∞``."""
        return float(2 * self.hsv[self.order :].sum())


def balanced_truncation(
    a: Tensor,
    B: Tensor,
    C: Tensor,
    eps: float,
    Wc: Tensor | None = None,
    Wo: Tensor | None = None,
) -> BalancedTruncation:
    """Balanced truncation of ``(diag(a), B, C)`` keeping ``σ_i/σ_1 ≥ eps`` (at least one state).

    ``a (d,)`` real with ``|a| < 1``, ``B (d, D)``, ``C (D, d)``; ``Wc``/``Wo``: empirical
    controllability/observability Gramians ``(d, d)`` to use instead of the closed forms.
    """
    if not 0 <= eps < 1:
        raise SsmloraError(f"Reduction eps must be in [0, 1) (e.g. 0.1 or 0.01), got {eps}.")
    a, B, C = a.double(), B.double(), C.double()
    Wc_closed, Wo_closed = gramians(a, B, C)
    Lc = psd_factor(Wc_closed if Wc is None else Wc.double())  # (d, d)
    Lo = psd_factor(Wo_closed if Wo is None else Wo.double())  # (d, d)
    U, hsv, Vh = torch.linalg.svd(Lc.T @ Lo)  # Lcᵀ Lo = U Σ Vᵀ
    if hsv[0] <= 0:
        raise SsmloraError("The adapter's SSM is zero (B or C is zero): nothing to reduce.")
    order = max(1, int((hsv / hsv[0] >= eps).sum()))
    scale = hsv[:order].rsqrt()  # Σ^{-1/2} (d̂,)
    T = Lc @ U[:, :order] * scale  # T[:, :d̂]   (d, d̂)
    T_inv = scale[:, None] * Vh[:order] @ Lo.T  # T⁻¹[:d̂]   (d̂, d)
    return BalancedTruncation(A=(T_inv * a) @ T, B=T_inv @ B, C=C @ T, hsv=hsv)


@dataclass
class ModalSystem:
    """A system in modal form, ``y = Re(C s)``, ``s_t = λ ⊙ s_{t−1} + B u_t`` (complex128).

    The first ``len(lam) − n_complex`` modes are real (real ``λ``, ``B``, ``C``); the last
    ``n_complex`` each stand for a conjugate pair (their ``C`` carries the factor 2).
    """

    lam: Tensor
    """Modes ``λ (k,)``."""
    B: Tensor
    """``(k, D)``."""
    C: Tensor
    """``(D, k)``."""
    n_complex: int
    """Number of complex modes (at the end)."""

    @property
    def order(self) -> int:
        """Real state dimension: one per real mode, two per complex one."""
        return self.lam.numel() + self.n_complex


def to_modal(A: Tensor, B: Tensor, C: Tensor, pair_tol: float = 1e-9) -> ModalSystem:
    """Diagonalise ``A (n, n)`` (real): ``A = V Λ V⁻¹``, ``B ← V⁻¹ B``, ``C ← C V``; stabilise
    ``|λ| ≥ 1`` to :data:`STABLE_RADIUS`; keep one mode of each conjugate pair (with ``2C``) and
    make real modes real (their eigenvector's phase cancels between ``B`` and ``C``)."""
    lam, V = torch.linalg.eig(A.double())  # (n,), (n, n)
    Bm = torch.linalg.solve(V, B.to(V.dtype))  # (n, D)
    Cm = C.to(V.dtype) @ V  # (D, n)
    radius = lam.abs()
    lam = torch.where(radius >= 1, lam / radius * STABLE_RADIUS, lam)
    tol = pair_tol * radius.clamp(min=1)
    upper, lower = lam.imag > tol, lam.imag < -tol
    real = ~(upper | lower)
    paired = int(upper.sum()) == int(lower.sum()) and torch.allclose(
        torch.sort(lam[upper].real).values, torch.sort(lam[lower].real).values
    )
    if not paired:  # keep every non-real mode as it is: still exact, only larger
        upper, lower = upper | lower, torch.zeros_like(lower)
    # real modes: rotate each eigenvector's phase onto C's largest entry, then drop imag parts
    big = Cm.abs().argmax(0)  # (n,)
    phase = torch.sgn(Cm[big, torch.arange(Cm.shape[1])])  # (n,)
    phase = torch.where(phase == 0, torch.ones_like(phase), phase)
    Cr, Br = (Cm / phase)[:, real].real, (Bm * phase[:, None])[real].real
    weight = 2.0 if paired else 1.0
    return ModalSystem(
        lam=torch.cat([lam[real].real.to(lam.dtype), lam[upper]]),
        B=torch.cat([Br.to(Bm.dtype), Bm[upper]]),
        C=torch.cat([Cr.to(Cm.dtype), weight * Cm[:, upper]], 1),
        n_complex=int(upper.sum()),
    )


def impulse_response(lam: Tensor, B: Tensor, C: Tensor, length: int) -> Tensor:
    """``h_k = Re(C diag(λ^k) B)``, ``(length, D, D)``, for a diagonal (or modal) system."""
    k = torch.arange(length, dtype=torch.float64)[:, None]
    powers = torch.exp(k * torch.log(lam.to(torch.complex128)))  # (length, n)
    C, B = C.to(torch.complex128), B.to(torch.complex128)
    return torch.einsum("dn,kn,ne->kde", C, powers, B).real


def dense_impulse_response(A: Tensor, B: Tensor, C: Tensor, length: int) -> Tensor:
    """``h_k = C A^k B``, ``(length, D, D)``, for a dense ``A``."""
    out, M = [], B.double()
    for _ in range(length):
        out.append(C.double() @ M)
        M = A.double() @ M
    return torch.stack(out)


def hinf_norm(lam: Tensor, B: Tensor, C: Tensor, A: Tensor | None = None, points: int = 4096):
    """``max_ω ‖G(e^{iω})‖₂`` on a grid of ``[0, π]``, ``G(z) = C (I − A z⁻¹)⁻¹ B``; ``A`` dense
    if given, else ``diag(lam)``. (Real systems: ``|G(e^{−iω})| = |G(e^{iω})|``.)"""
    z_inv = torch.exp(-1j * torch.linspace(0, torch.pi, points, dtype=torch.float64))  # (F,)
    B, C = B.to(torch.complex128), C.to(torch.complex128)
    if A is None:
        resolvent = 1 / (1 - lam.to(torch.complex128)[None, :] * z_inv[:, None])  # (F, n)
        G = torch.einsum("dn,fn,ne->fde", C, resolvent, B)
    else:
        eye = torch.eye(A.shape[0], dtype=torch.complex128)
        M = eye - A.to(torch.complex128)[None] * z_inv[:, None, None]  # (F, n, n)
        G = C @ torch.linalg.solve(M, B.expand(points, *B.shape))
    return float(torch.linalg.matrix_norm(G, ord=2).max())
