"""The pure-PyTorch Mamba-1 / Mamba-2 mixer forward that the state methods run through.

Initial-state tuning, state-offset tuning, additional-scan and SSM prefix-tuning change the scan
itself, which HF's fused kernels (``mamba_inner_fn``, ``mamba2_split_conv1d_scan_combined``) do not
expose. These functions compute HF's own pure-PyTorch path step for step, calling the same
module-level functions (``causal_conv1d_fn``, ``mamba_selective_scan``, ``mamba2_chunk_scan``: the
fallbacks, or their kernels where ``mamba_ssm`` / ``causal_conv1d`` are installed), and add the
method's terms. Because the selective scan is linear in its state, each term is exact and separate
(Mamba paper eq. 2a-2b, ``h_t = Ā_t h_{t−1} + B̄_t x_t``, ``y_t = C_t h_t``):

* initial state ``h_{−1} = θ``: ``y_t += C_t (∏_{s≤t} Ā_s) θ`` with ``∏ Ā_s = exp(A Σ_{s≤t} Δ_s)``
  (Mamba-2: passed as the chunk scan's ``initial_states``);
* conv state: the ``k−1`` inputs before position 0 (zeros in HF) add their taps to the first
  ``k−1`` convolution outputs;
* state offset ``h'`` (State-offset Tuning, arXiv 2503.03499, ``y_t = C_t (h_t + h')``):
  ``y_t += C_t h'``; output tuning ``y_t += b``;
* additional scan (MambaPEFT, arXiv 2411.03855): ``n`` extra states with their own ``A``, ``B``,
  ``C`` rows run as a second scan; ``y_t += C'_t h'_t``;
* prefix: ``M`` trainable positions before the sequence in the projected input; their outputs are
  dropped before ``out_proj``.

All terms enter before the gate (Mamba-1: ``y ⊙ SiLU(z)``; Mamba-2: the gated RMSNorm), as in the
reference implementations. With every term zero the output is bit for bit HF's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.mamba import modeling_mamba as m1
from transformers.models.mamba2 import modeling_mamba2 as m2


def conv_state_term(state: Tensor, weight: Tensor, length: int) -> Tensor:
    """What a conv state adds to a causal depthwise convolution's outputs: ``state (C, k−1)`` are
    the inputs before position 0, ``weight (C, k)``; returns ``(C, length)`` (zero after ``k−2``)."""
    k = weight.shape[-1]
    lead = F.pad(state.to(weight.dtype), (0, k - 1))  # (C, 2k−2): the state, then zeros
    term = F.conv1d(lead[None], weight[:, None, :], groups=weight.shape[0])[0]  # (C, k−1)
    term = term[:, :length]
    return F.pad(term, (0, length - term.shape[-1]))


def _convolve(mixer: nn.Module, xbc: Tensor, conv_state: Tensor | None, fn) -> Tensor:
    """HF's causal conv + activation of ``xbc (B, C, L)``, with the optional conv state (then in
    PyTorch, laid out as HF's fallback lays it out, so a zero state changes no bit)."""
    weight, bias = mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias
    if conv_state is None:
        return fn(xbc, weight, bias, activation=mixer.activation)
    k, length = weight.shape[-1], xbc.shape[-1]
    out = F.conv1d(xbc.to(weight.dtype), weight[:, None, :], bias, padding=k - 1,
                   groups=weight.shape[0])  # fmt: skip
    out = torch.cat(
        [out[..., : k - 1] + conv_state_term(conv_state, weight, k - 1), out[..., k - 1 :]], -1
    )
    return mixer.act(out[..., :length]).to(xbc.dtype)


def _prefix_mask(mask: Tensor | None, m: int) -> Tensor | None:
    return mask if mask is None or m == 0 else F.pad(mask, (m, 0), value=1)


def _write_cache(cache, mixer: nn.Module, conv_input: Tensor, final_state: Tensor | None) -> None:
    """Store a prefill's conv inputs (their last ``k−1``) and final SSM state in HF's cache."""
    cache.update_conv_state(conv_input, mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    if final_state is not None:
        cache.update_recurrent_state(final_state, mixer.layer_idx)


def mamba1_forward(mixer: nn.Module, adapter: nn.Module, hidden_states: Tensor,
                   attention_mask: Tensor | None = None, cache=None) -> Tensor:  # fmt: skip
    """HF ``MambaMixer``'s pure-PyTorch forward plus ``adapter``'s state terms (see the module
    docstring). ``hidden_states (B, L, D_m)`` -> ``(B, L, D_m)``; ``adapter`` holds the optional
    ``initial_state (D, N)``, ``conv_state (D, k−1)``, ``state_offset (D, N)``, ``output_bias
    (D,)``, ``prefix (M, D)``, ``extra_A_log (D, n)``, ``extra_B``, ``extra_C (n, D)``."""
    batch = hidden_states.shape[0]
    dtype = hidden_states.dtype
    hidden_states = m1.apply_mask_to_padding_states(hidden_states, attention_mask)
    projected = mixer.in_proj(hidden_states).transpose(1, 2)  # (B, 2D, L)
    A = -torch.exp(mixer.A_log.float())  # (D, N)
    x, gate = projected.chunk(2, dim=1)  # (B, D, L) each
    m = 0 if adapter.prefix is None else adapter.prefix.shape[0]
    if m:  # M virtual positions before the sequence; the gate there is never used
        x = torch.cat([adapter.prefix.to(x.dtype).T.expand(batch, -1, -1), x], dim=2)
        gate = F.pad(gate, (m, 0))
        attention_mask = _prefix_mask(attention_mask, m)
    conv_input = x
    x = _convolve(mixer, x, adapter.conv_state, m1.causal_conv1d_fn)
    x = m1.apply_mask_to_padding_states(x.transpose(1, 2), attention_mask)  # (B, L', D)
    r, n = mixer.time_step_rank, mixer.ssm_state_size
    time_step, B, C = torch.split(mixer.x_proj(x), [r, n, n], dim=-1)
    time_step = mixer.dt_proj.weight @ time_step.transpose(1, 2)  # (B, D, L')
    bias = mixer.dt_proj.bias.float() if mixer.dt_proj.bias is not None else None
    scan = dict(delta_bias=bias, delta_softplus=True, use_mambapy=mixer.use_mambapy,
                use_associative_scan=getattr(mixer, "use_associative_scan", False))  # fmt: skip
    result = m1.mamba_selective_scan(
        x.transpose(1, 2), time_step, A, B.transpose(1, 2), C.transpose(1, 2),
        D=mixer.D.float(), z=gate, return_last_state=cache is not None, **scan,
    )  # fmt: skip
    y, final_state = result if cache is not None else (result, None)
    C = C.transpose(1, 2).float()  # (B, N, L')
    terms = []
    if adapter.initial_state is not None:
        delta = F.softplus(time_step + bias[:, None]) if bias is not None else F.softplus(time_step)
        decay = torch.exp(A[None, :, None, :] * delta.float().cumsum(-1)[..., None])  # (B,D,L',N)
        carried = decay * adapter.initial_state[None, :, None, :]
        terms.append(torch.einsum("bdln,bnl->bdl", carried, C))
        if final_state is not None:
            final_state = final_state + carried[:, :, -1].to(final_state.dtype)
    if adapter.state_offset is not None:
        terms.append(torch.einsum("bnl,dn->bdl", C, adapter.state_offset))
    if adapter.output_bias is not None:
        terms.append(adapter.output_bias[None, :, None])
    if adapter.extra_B is not None:
        B2 = x @ adapter.extra_B.to(x.dtype).T  # (B, L', n)
        C2 = x @ adapter.extra_C.to(x.dtype).T
        A2 = -torch.exp(adapter.extra_A_log.float())
        terms.append(m1.mamba_selective_scan(x.transpose(1, 2), time_step, A2,
                                             B2.transpose(1, 2), C2.transpose(1, 2), **scan))  # fmt: skip
    if terms:
        y = y + F.silu(gate.float()) * sum(terms)
    if cache is not None:
        _write_cache(cache, mixer, _with_conv_state(conv_input, adapter.conv_state), final_state)
    return mixer.out_proj(y[..., m:].transpose(1, 2).to(dtype))


def mamba2_forward(mixer: nn.Module, adapter: nn.Module, hidden_states: Tensor,
                   attention_mask: Tensor | None = None, cache=None) -> Tensor:  # fmt: skip
    """HF ``Mamba2Mixer``'s pure-PyTorch forward plus ``adapter``'s state terms. ``adapter``
    holds the optional ``initial_state (H, P, N)``, ``conv_state (I+2GN, k−1)``,
    ``state_offset (H, P, N)``, ``output_bias (I,)``, ``prefix (M, I+2GN+H)`` (the projected
    x, B, C and Δ of the virtual positions), ``extra_B``, ``extra_C (G·n, D_m)``."""
    batch = hidden_states.shape[0]
    dtype = hidden_states.dtype
    heads, head_dim, groups = mixer.num_heads, mixer.head_dim, mixer.n_groups
    n, width = mixer.ssm_state_size, mixer.conv_dim
    hidden_states = m2.apply_mask_to_padding_states(hidden_states, attention_mask)
    projected = mixer.in_proj(hidden_states)
    A = -torch.exp(mixer.A_log.float())  # (H,)
    gate, xbc, dt = projected.split([mixer.intermediate_size, width, heads], dim=-1)
    m = 0 if adapter.prefix is None else adapter.prefix.shape[0]
    if m:
        virtual = adapter.prefix.to(xbc.dtype).expand(batch, -1, -1)  # (B, M, width + H)
        xbc = torch.cat([virtual[..., :width], xbc], dim=1)
        dt = torch.cat([virtual[..., width:], dt], dim=1)
        gate = F.pad(gate, (0, 0, m, 0))
        attention_mask = _prefix_mask(attention_mask, m)
    conv_input = xbc.transpose(1, 2)
    xbc = _convolve(mixer, conv_input, adapter.conv_state, m2.causal_conv1d_fn)
    xbc = m2.apply_mask_to_padding_states(xbc.transpose(1, 2), attention_mask)
    x, B, C = torch.split(xbc, [mixer.intermediate_size, groups * n, groups * n], dim=-1)
    length = x.shape[1]
    x = x.view(batch, length, heads, head_dim)
    scan = dict(chunk_size=mixer.chunk_size, z=None, dt_bias=mixer.dt_bias, dt_softplus=True,
                dt_limit=mixer.time_step_limit)  # fmt: skip
    initial = None
    if adapter.initial_state is not None:
        initial = adapter.initial_state.expand(batch, -1, -1, -1)
    result = m2.mamba2_chunk_scan(
        x, dt, A, B.view(batch, length, groups, n), C.view(batch, length, groups, n), D=mixer.D,
        return_final_states=cache is not None, initial_states=initial, **scan,
    )  # fmt: skip
    y, final_state = result if cache is not None else (result, None)
    terms = []
    if adapter.state_offset is not None:
        per_head = C.view(batch, length, groups, n).repeat_interleave(heads // groups, dim=2)
        terms.append(torch.einsum("blhn,hpn->blhp", per_head.float(), adapter.state_offset))
    if adapter.output_bias is not None:
        terms.append(adapter.output_bias.view(heads, head_dim))
    if adapter.extra_B is not None:
        extra = adapter.extra_B.shape[0] // groups
        B2 = F.silu(hidden_states @ adapter.extra_B.to(hidden_states.dtype).T)  # (B, L, G·n)
        C2 = F.silu(hidden_states @ adapter.extra_C.to(hidden_states.dtype).T)
        B2, C2 = (m2.apply_mask_to_padding_states(t, attention_mask) for t in (B2, C2))
        shape = (batch, length, groups, extra)
        terms.append(m2.mamba2_chunk_scan(x, dt, A, B2.view(shape), C2.view(shape), **scan))
    if terms:
        y = y + sum(terms)
    if cache is not None:
        _write_cache(cache, mixer, _with_conv_state(conv_input, adapter.conv_state), final_state)
    y = y.reshape(batch, length, -1)[:, m:]
    return mixer.out_proj(mixer.norm(y, gate[:, m:]).to(dtype))


def _with_conv_state(conv_input: Tensor, conv_state: Tensor | None) -> Tensor:
    """``conv_input (B, C, L)`` after the conv state's ``k−1`` inputs (what the cache keeps the
    last ``k−1`` positions of)."""
    if conv_state is None:
        return conv_input
    lead = conv_state.to(conv_input.dtype).expand(conv_input.shape[0], -1, -1)
    return torch.cat([lead, conv_input], dim=-1)
