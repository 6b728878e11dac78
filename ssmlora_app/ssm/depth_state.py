"""SSMLoRA's state update along depth, as one autograd node, with its slow reference beside it.

Per token (SSMLoRA, Yu et al. 2025: an explicit Euler step of ``h' = W_c h + W_d u``, then a
normalisation over the r axis), with ``u, h_prev`` of shape ``(N, r)`` (``N`` = all leading dims)::

    h  = h_prev (I + W_c) + u W_d                                         (N, r)
    ĥ  = (h − min_r h) / (max_r h − min_r h + eps)         norm = minmax
       = (h − mean_r h) / sqrt(var_r h + eps)              norm = layernorm
       = h                                                 norm = none
    z  = u + m ⊙ ĥ                                                        (N, r)

``m`` is the dropout mask already divided by ``1 − p`` (None: no dropout). ``z`` feeds the
up-projection ``W_b``; the state passed to the next module of the chain is ``ĥ`` or ``h``.

Why a custom node: written with autograd ops, these few lines are ~15 forward and ~25 backward
kernels on ``(N, r)`` tensors with ``r = 8``; each costs its launch overhead more than its
arithmetic, and autograd keeps ``h − min`` beside ``h`` and a zero state at a chain's first
position. :class:`DepthState` runs the forward in 6–8 kernels (two ``addmm``, one ``aminmax``,
the normalisation and ``addcmul`` on fresh buffers, in place), keeps ``u``, ``h_prev``, ``h``,
``ĥ`` and the per-token statistics, and writes the backward by hand (derivation in
:meth:`DepthState.backward`). Ties in the min-max share the gradient equally, exactly as
autograd's ``aminmax`` does (all r entries tie at init, when ``W_c = W_d = 0``).
:func:`depth_state_reference` is the same arithmetic in plain autograd ops: tests check that the
two agree in float64 (values and gradients) and that the node passes ``gradcheck``.

All arithmetic runs in ``promote(W dtype, float32)`` with autocast off (fp32, or fp64 for
reference tests); ``z`` comes back in ``u``'s dtype, the passed state in the compute dtype.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import Tensor

Norm = Literal["minmax", "layernorm", "none"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 when the adapter itself is fp64 (reference tests)."""
    return torch.promote_types(dtype, torch.float32)


def dropout_mask(like: Tensor, p: float) -> Tensor:
    """Inverted-dropout mask for ``like``: 0 with probability ``p``, else ``1/(1 − p)``."""
    return torch.empty_like(like).bernoulli_(1 - p).div_(1 - p)


def depth_state_reference(
    u: Tensor,
    h_prev: Tensor | None,
    W_c: Tensor,
    W_d: Tensor,
    mask: Tensor | None,
    *,
    norm: Norm = "minmax",
    eps: float = 1e-5,
    pass_normalised: bool = True,
) -> tuple[Tensor, Tensor]:
    """The update in plain autograd ops (the oracle of :func:`depth_state`).

    ``u (..., r)``, ``h_prev (..., r)`` or None (zeros), ``W_c, W_d (r, r)``, ``mask (..., r)``
    or None. Returns ``z`` in ``u``'s dtype and the passed state (``ĥ`` or ``h``).
    """
    dtype = compute_dtype(W_c.dtype)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u_c = u.to(dtype)
        h = u_c @ W_d.to(dtype)
        if h_prev is not None:
            h_prev = h_prev.to(dtype)
            h = h + h_prev + h_prev @ W_c.to(dtype)
        if norm == "minmax":
            low, high = torch.aminmax(h, dim=-1, keepdim=True)
            h_hat = (h - low) / (high - low + eps)
        elif norm == "layernorm":
            h_hat = torch.nn.functional.layer_norm(h, h.shape[-1:], eps=eps)
        else:
            h_hat = h
        dropped = h_hat if mask is None else h_hat * mask.to(dtype)
        z = u_c + dropped
    return z.to(u.dtype), h_hat if pass_normalised else h


def _forward(
    u: Tensor,
    h_prev: Tensor | None,
    W_c: Tensor,
    W_d: Tensor,
    mask: Tensor | None,
    norm: str,
    eps: float,
) -> tuple[Tensor, ...]:
    """The forward arithmetic on ``(N, r)`` views: ``z, h, ĥ`` and the normalisation's
    per-token statistics (``min, max, R`` for minmax, ``rstd`` for layer norm)."""
    # h = h_prev + h_prev W_c + u W_d; a chain's first position (zero state) is u W_d alone
    h = u @ W_d if h_prev is None else torch.addmm(h_prev, h_prev, W_c).addmm_(u, W_d)
    stats: tuple[Tensor, ...] = ()
    if norm == "minmax":
        low, high = torch.aminmax(h, dim=-1, keepdim=True)  # (N, 1) each
        span = (high - low).add_(eps)
        h_hat = torch.sub(h, low).div_(span)
        stats = (low, high, span)
    elif norm == "layernorm":
        var, mean = torch.var_mean(h, dim=-1, unbiased=False, keepdim=True)
        rstd = var.add_(eps).rsqrt_()
        h_hat = torch.sub(h, mean).mul_(rstd)
        stats = (rstd,)
    else:
        h_hat = h
    z = torch.add(u, h_hat) if mask is None else torch.addcmul(u, h_hat, mask)
    return z, h, h_hat, *stats


def _rows(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``(..., r)`` -> ``(N, r)`` in ``dtype`` (a view when it can be)."""
    return None if t is None else t.reshape(-1, t.shape[-1]).to(dtype)


class DepthState(torch.autograd.Function):
    """The fused update; call it through :func:`depth_state`."""

    @staticmethod
    def forward(ctx, u, h_prev, W_c, W_d, mask, norm, eps, pass_normalised):
        dtype = compute_dtype(W_c.dtype)
        u2, p2, m2 = _rows(u, dtype), _rows(h_prev, dtype), _rows(mask, dtype)
        W_c, W_d = W_c.to(dtype), W_d.to(dtype)
        z, h, h_hat, *stats = _forward(u2, p2, W_c, W_d, m2, norm, eps)
        ctx.norm, ctx.pass_normalised = norm, pass_normalised
        ctx.shapes = (u.shape, None if h_prev is None else h_prev.shape)
        ctx.dtypes = (u.dtype, None if h_prev is None else h_prev.dtype, W_c.dtype)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(u2, p2, W_c, W_d, m2, h, h_hat, *stats)
        passed = h_hat if pass_normalised else h
        return z.reshape(u.shape).to(u.dtype), passed.reshape(u.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_z, g_passed):
        """With ``g = ∂L/∂ĥ`` per token, ``R = max − min + eps``, ``S₁ = Σ_r g``,
        ``S₂ = Σ_r g ĥ``, and ``a``/``b`` the shares of the min/max (1/#ties at the tied entries,
        else 0), the min-max backward is ``∂L/∂h = (g − a (S₁ − S₂) − b S₂) / R``; layer norm's
        is ``(g − mean_r g − ĥ mean_r(g ĥ)) · rstd``. Then ``∂L/∂W_d = uᵀ ∂h``,
        ``∂L/∂W_c = h_prevᵀ ∂h``, ``∂L/∂u = ∂L/∂z + ∂h W_dᵀ``,
        ``∂L/∂h_prev = ∂h (I + W_c)ᵀ``."""
        u2, p2, W_c, W_d, m2, h, h_hat, *stats = ctx.saved_tensors
        u_shape, prev_shape = ctx.shapes
        u_dtype, prev_dtype, w_dtype = ctx.dtypes
        g_u = g_hat = g_h = None  # ∂L/∂u (direct part), ∂L/∂ĥ, ∂L/∂h
        if g_z is not None:
            g_u = _rows(g_z, h.dtype)
            g_hat = g_u if m2 is None else g_u * m2
        if g_passed is not None:
            g_passed = _rows(g_passed, h.dtype)
            if ctx.pass_normalised:
                g_hat = g_passed if g_hat is None else g_hat + g_passed
            else:
                g_h = g_passed
        if g_hat is not None:
            g_norm = _norm_backward(ctx.norm, g_hat, h, h_hat, stats)
            g_h = g_norm if g_h is None else g_h + g_norm
        if g_h is None:
            return (None,) * 8
        needs = ctx.needs_input_grad
        if needs[0]:
            g_u = g_h @ W_d.T if g_u is None else torch.addmm(g_u, g_h, W_d.T)
            g_u = g_u.reshape(u_shape).to(u_dtype)
        g_prev = g_W_c = None
        if p2 is not None:
            if needs[1]:
                g_prev = torch.addmm(g_h, g_h, W_c.T).reshape(prev_shape).to(prev_dtype)
            if needs[2]:
                g_W_c = (p2.T @ g_h).to(w_dtype)
        elif needs[2]:
            g_W_c = torch.zeros_like(W_c, dtype=w_dtype)  # the zero state: W_c gets exactly 0
        g_W_d = (u2.T @ g_h).to(w_dtype) if needs[3] else None
        return g_u if needs[0] else None, g_prev, g_W_c, g_W_d, None, None, None, None


def _norm_backward(norm: str, g: Tensor, h: Tensor, h_hat: Tensor, stats: list[Tensor]) -> Tensor:
    """``∂L/∂h`` from ``g = ∂L/∂ĥ`` (all ``(N, r)``), see :meth:`DepthState.backward`."""
    if norm == "minmax":
        low, high, span = stats
        s1 = g.sum(-1, keepdim=True)  # (N, 1)
        s2 = (g * h_hat).sum(-1, keepdim=True)  # (N, 1)
        # the min's and the max's shares, split equally among ties (autograd's aminmax rule)
        a = (h == low).to(g.dtype)
        b = (h == high).to(g.dtype)
        a.mul_((s1 - s2).div_(a.sum(-1, keepdim=True)))
        b.mul_(s2.div_(b.sum(-1, keepdim=True)))
        return (g - a - b).div_(span)
    if norm == "layernorm":
        (rstd,) = stats
        mean_g = g.mean(-1, keepdim=True)
        mean_gh = (g * h_hat).mean(-1, keepdim=True)
        return (g - mean_g - h_hat * mean_gh).mul_(rstd)
    return g


def depth_state(
    u: Tensor,
    h_prev: Tensor | None,
    W_c: Tensor,
    W_d: Tensor,
    mask: Tensor | None,
    *,
    norm: Norm = "minmax",
    eps: float = 1e-5,
    pass_normalised: bool = True,
) -> tuple[Tensor, Tensor]:
    """The fused update (see the module docstring): ``u (..., r)``, ``h_prev (..., r)`` or None
    (a chain's first position: zeros), ``W_c, W_d (r, r)``, ``mask (..., r)`` or None.

    Returns ``z = u + mask ⊙ ĥ`` in ``u``'s dtype and the state to pass on (``ĥ``, or
    ``h`` when ``pass_normalised`` is false) in the compute dtype; both ``(..., r)``.
    """
    autocast = torch.is_autocast_enabled(u.device.type)
    with torch.autocast(u.device.type, enabled=False) if autocast else contextlib.nullcontext():
        tensors = (u, h_prev, W_c, W_d)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return DepthState.apply(u, h_prev, W_c, W_d, mask, norm, eps, pass_normalised)
        dtype = compute_dtype(W_c.dtype)  # no graph (inference): the same arithmetic, no node
        rows = (_rows(u, dtype), _rows(h_prev, dtype), W_c.to(dtype), W_d.to(dtype))
        z, h, h_hat, *_ = _forward(*rows, _rows(mask, dtype), norm, eps)
        passed = h_hat if pass_normalised else h
        return z.reshape(u.shape).to(u.dtype), passed.reshape(u.shape)
