"""Products with thin (low-rank) matrices, laid out for the fast path of CPU matmul kernels.

Every adapter multiplies activations ``x (..., K)`` by thin matrices: down-projections
``(K, r)`` (LoRA's ``Aᵀ``, SSMLoRA's ``W_a``, HRM's ``B̄ᵀ``) and up-projections ``(r, N)``
(LoRA's ``Bᵀ``, SSMLoRA's ``W_b``, HRM's ``Cᵀ``), with ``r`` (rank, state size) ≪ ``K, N``.
A training step runs each product three times (forward, input gradient, weight gradient), and
on CPU the speed of the first two depends on how the thin matrix sits in memory. Measured by
``python benchmarks/thin_matmul.py`` (torch 2.13 CPU, 1 thread, 256 tokens, r = 8, forward +
backward): ``x (768) -> (8)`` through a row-major ``(768, 8)`` matrix 0.95 ms, rank-major (its
transpose ``(8, 768)`` contiguous, the layout of ``nn.Linear(768, 8)``'s weight) 0.49 ms;
``u (8) -> (3072)`` through ``nn.Linear(8, 3072)``'s ``(3072, 8)`` weight 5.7 ms, rank-major
2.0 ms; ``(3072) -> (8)`` 6.6 ms against 2.7 ms. :func:`rank_major` makes that copy (``r·K``
numbers, negligible next to the product) and leaves values, shapes and gradients as they are:
only the memory order changes. On CUDA the copy is one small extra kernel per product.
"""

from __future__ import annotations

import torch
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


def add_product_(out: Tensor, a: Tensor, w: Tensor, alpha: float = 1.0) -> Tensor:
    """``out += alpha · (a @ w)`` in place; ``out (..., N)``, ``a (..., K)``, ``w (K, N)``.

    One GEMM with ``beta = 1`` (``addmm_``) when ``out`` is contiguous and the product can run in
    ``out``'s dtype (``a`` and ``w`` already in it, or ``w`` cast to it under autocast, which
    casts it so anyway): no ``(..., N)`` product, scaled copy or sum is allocated, and the
    backward scales the thin ``(…, K)`` and ``(K, N)`` gradients instead of a ``(…, N)`` one.
    Otherwise (e.g. an fp32 adapter on a bf16 layer without autocast) the product runs in
    ``w``'s dtype and is cast, as before. ``out`` must be a fresh buffer no backward reads (a
    linear's output). Pass ``out`` as a 2-D ``(rows, N)`` tensor where it can be: an in-place op
    on a view of a tensor makes autograd clone the tensor's whole gradient in backward.
    """
    if out._is_view():  # e.g. bitsandbytes' 4-bit layers return a view of a no-grad buffer,
        return out + (a @ w).mul_(alpha).to(out.dtype)  # which no in-place op may write
    same = a.dtype == out.dtype
    castable = w.dtype == out.dtype or torch.is_autocast_enabled(out.device.type)
    if same and castable and out.dim() == 2:
        return out.addmm_(a, w.to(out.dtype), alpha=alpha)
    if same and castable and out.is_contiguous():  # through a view: autograd copies the gradient
        rows = out.view(-1, out.shape[-1])
        rows.addmm_(a.reshape(-1, a.shape[-1]), w.to(out.dtype), alpha=alpha)
        return out
    return out.add_((a @ w).mul_(alpha).to(out.dtype))
