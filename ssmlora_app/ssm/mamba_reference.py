"""Sequential float64 references of the Mamba-1 and Mamba-2 mixers with the state methods' changes
(the oracle of :mod:`ssmlora_app.adapters.mamba_forward`; slow, for tests and for reading).

Each runs the recurrence one position at a time from a mixer's weights, every product in float64::

    Mamba-1 (Mamba paper eq. 2a-2b, per channel d and state n):
        h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t x_t,   h_{−1} = initial_state
        y_t = (C_t · (h_t + state_offset) + D x_t + output_bias) ⊙ SiLU(z_t)
    Mamba-2 (SSD, Mamba-2 paper eq. 1 with a scalar A per head h):
        h_t[h] = exp(Δ_t[h] A[h]) h_{t−1}[h] + Δ_t[h] x_t[h] ⊗ B_t[g(h)]
        y_t[h] = h_t[h] C_t[g(h)] + D[h] x_t[h] (+ offset, bias), then the gated RMSNorm

Options: ``initial_state``, ``conv_state`` (the ``k−1`` conv inputs before position 0),
``state_offset``, ``output_bias``, ``extra`` (additional-scan tensors: Mamba-1 ``(A_log (D, n),
W_B (n, D), W_C (n, D))`` on the conv output; Mamba-2 ``(W_B, W_C)`` ``(G·n, D_m)`` on the mixer
input, SiLU, sharing the head's decay) and ``prefix`` (virtual positions of the projected input,
dropped from the output). ``hidden (B, L, D_m)``, ``mask (B, L)`` or None; returns ``(B, L, D_m)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _w(module: nn.Module) -> Tensor:
    return module.weight.detach().double()


def _b(module: nn.Module) -> Tensor | None:
    return None if module.bias is None else module.bias.detach().double()


def _linear(x: Tensor, module: nn.Module) -> Tensor:
    return F.linear(x, _w(module), _b(module))


def _causal_conv(x: Tensor, conv: nn.Conv1d, state: Tensor | None) -> Tensor:
    """``x (B, L, C)`` through the depthwise causal conv, position by position, then SiLU."""
    weight, bias = _w(conv)[:, 0], _b(conv)  # (C, k)
    k = weight.shape[-1]
    lead = torch.zeros(x.shape[0], k - 1, x.shape[2], dtype=x.dtype)
    if state is not None:
        lead = lead + state.double().T
    padded = torch.cat([lead, x], dim=1)
    out = torch.stack([(padded[:, t : t + k] * weight.T).sum(1) for t in range(x.shape[1])], 1)
    return F.silu(out if bias is None else out + bias)


def _mask(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask[..., None].double()


def _with_prefix(tensor: Tensor, prefix: Tensor | None, width: slice) -> Tensor:
    if prefix is None:
        return tensor
    lead = prefix.double()[:, width].expand(tensor.shape[0], -1, -1)
    return torch.cat([lead, tensor], dim=1)


@torch.no_grad()
def mamba1_reference(mixer: nn.Module, hidden: Tensor, mask: Tensor | None = None, *,
                     initial_state=None, conv_state=None, state_offset=None, output_bias=None,
                     extra=None, prefix=None) -> Tensor:  # fmt: skip
    """A ``MambaMixer``'s output, sequentially in float64 (see the module docstring)."""
    d, n, r = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
    u = _mask(hidden.double(), mask)
    x, z = _linear(u, mixer.in_proj).split([d, d], dim=-1)  # (B, L, D) each
    m = 0 if prefix is None else prefix.shape[0]
    x = _with_prefix(x, prefix, slice(None))
    z = F.pad(z, (0, 0, m, 0))
    mask = mask if mask is None or not m else F.pad(mask, (m, 0), value=1)
    x = _mask(_causal_conv(x, mixer.conv1d, conv_state), mask)
    low, B, C = _linear(x, mixer.x_proj).split([r, n, n], dim=-1)
    delta = F.softplus(_linear(low, mixer.dt_proj))  # (B, L, D)
    A = -torch.exp(mixer.A_log.detach().double())  # (D, N)
    h = torch.zeros(x.shape[0], d, n, dtype=torch.float64)
    if initial_state is not None:
        h = h + initial_state.double()
    if extra is not None:
        a_log, w_b, w_c = (t.detach().double() for t in extra)
        A = torch.cat([A, -torch.exp(a_log)], dim=1)
        B = torch.cat([B, x @ w_b.T], dim=-1)
        C = torch.cat([C, x @ w_c.T], dim=-1)
        h = torch.cat([h, torch.zeros(x.shape[0], d, w_b.shape[0], dtype=torch.float64)], -1)
    ys = []
    for x_t, z_t, d_t, b_t, c_t in zip(*(t.unbind(1) for t in (x, z, delta, B, C)), strict=True):
        h = torch.exp(d_t[..., None] * A) * h + (d_t * x_t)[..., None] * b_t[:, None, :]
        y = (h * c_t[:, None, :]).sum(-1) + mixer.D.detach().double() * x_t
        if state_offset is not None:
            y = y + (state_offset.double() * c_t[:, None, :n]).sum(-1)
        if output_bias is not None:
            y = y + output_bias.double()
        ys.append(y * F.silu(z_t))
    return _linear(torch.stack(ys, 1)[:, m:], mixer.out_proj)


@torch.no_grad()
def mamba2_reference(mixer: nn.Module, hidden: Tensor, mask: Tensor | None = None, *,
                     initial_state=None, conv_state=None, state_offset=None, output_bias=None,
                     extra=None, prefix=None) -> Tensor:  # fmt: skip
    """A ``Mamba2Mixer``'s output, sequentially in float64 (see the module docstring)."""
    i, g, n = mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size
    heads, p, width = mixer.num_heads, mixer.head_dim, mixer.conv_dim
    u = _mask(hidden.double(), mask)
    z, xbc, dt = _linear(u, mixer.in_proj).split([i, width, heads], dim=-1)
    m = 0 if prefix is None else prefix.shape[0]
    xbc = _with_prefix(xbc, prefix, slice(0, width))
    dt = _with_prefix(dt, prefix, slice(width, None))
    z = F.pad(z, (0, 0, m, 0))
    mask = mask if mask is None or not m else F.pad(mask, (m, 0), value=1)
    xbc = _mask(_causal_conv(xbc, mixer.conv1d, conv_state), mask)
    x, B, C = xbc.split([i, g * n, g * n], dim=-1)
    batch, length = x.shape[:2]
    x = x.view(batch, length, heads, p)
    B, C = (t.view(batch, length, g, n).repeat_interleave(heads // g, dim=2) for t in (B, C))
    lo, hi = mixer.time_step_limit
    delta = (F.softplus(dt + mixer.dt_bias.detach().double())).clamp(lo, hi)  # (B, L, H)
    A = -torch.exp(mixer.A_log.detach().double())  # (H,)
    h = torch.zeros(batch, heads, p, n, dtype=torch.float64)
    if initial_state is not None:
        h = h + initial_state.double()
    if extra is not None:
        w_b, w_c = (t.detach().double() for t in extra)
        n2 = w_b.shape[0] // g
        B2, C2 = (_mask(F.silu(u @ w.T), mask).view(batch, length, g, n2) for w in (w_b, w_c))
        B = torch.cat([B, B2.repeat_interleave(heads // g, dim=2)], dim=-1)
        C = torch.cat([C, C2.repeat_interleave(heads // g, dim=2)], dim=-1)
        h = torch.cat([h, torch.zeros(batch, heads, p, n2, dtype=torch.float64)], dim=-1)
    ys = []
    for x_t, d_t, b_t, c_t in zip(*(t.unbind(1) for t in (x, delta, B, C)), strict=True):
        h = (
            torch.exp(d_t * A)[..., None, None] * h
            + (d_t[..., None] * x_t)[..., None] * b_t[:, :, None]
        )
        y = (h * c_t[:, :, None]).sum(-1) + mixer.D.detach().double()[:, None] * x_t
        if state_offset is not None:
            y = y + (state_offset.double() * c_t[:, :, None, :n]).sum(-1)
        if output_bias is not None:
            y = y + output_bias.double().view(heads, p)
        ys.append(y.reshape(batch, i))
    y = torch.stack(ys, 1)[:, m:] * F.silu(z[:, m:])  # the gated RMSNorm, per group
    groups = y.view(batch, length - m, g, i // g)
    eps = mixer.norm.variance_epsilon
    y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)).view(batch, -1, i)
    return _linear(y * mixer.norm.weight.detach().double(), mixer.out_proj)
