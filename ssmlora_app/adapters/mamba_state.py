"""The layer the state methods put in place of each Mamba mixer: the frozen mixer as ``base_layer``
plus the method's trainable state tensors, run through
:mod:`ssmlora_app.adapters.mamba_forward` (HF's pure-PyTorch path with the method's terms).

One class serves initial-state tuning, state-offset tuning, additional-scan and SSM prefix-tuning
(each method file adds the tensors it trains). Not mergeable: none of them is a fixed change of a
backbone weight.

Which path runs: always this pure-PyTorch one (on CPU and GPU), since HF's fused
``mamba_inner_fn`` cannot take these terms; where ``mamba_ssm`` is installed its selective-scan
and chunk-scan kernels still run inside it (HF's module-level functions). KV-cached generation:
the prefill writes the conv and SSM states to HF's cache; decoding steps then run HF's own mixer
for the methods that only change the past (initial state, prefix) and are refused with one clear
error for those that act at every step (state offset, additional scan).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.mamba_forward import mamba1_forward, mamba2_forward
from ssmlora_app.adapters.mamba_targets import mixer_kind, require_mixers
from ssmlora_app.adapters.targets import replace_module
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import NO_DECAY_ATTR

log = logging.getLogger(__name__)

STATE_TENSORS = ("initial_state", "conv_state", "state_offset", "output_bias", "prefix",
                 "extra_A_log", "extra_B", "extra_C")  # fmt: skip
"""The tensors a method may add (see :func:`~ssmlora_app.adapters.mamba_forward.mamba1_forward`
and :func:`~ssmlora_app.adapters.mamba_forward.mamba2_forward` for their shapes and roles)."""

FORWARDS = {"mamba": mamba1_forward, "mamba2": mamba2_forward}


class MambaStateAdapter(AdapterLayer):
    """A frozen HF ``MambaMixer``/``Mamba2Mixer`` (``base_layer``) with trainable state tensors.

    ``forward(hidden_states (B, L, D_m), cache=None, attention_mask=None) -> (B, L, D_m)``, called
    by the block exactly as the mixer is. Tensors not added stay None (no term)."""

    def __init__(self, mixer: nn.Module, method: str, decodes_like_base: bool):
        super().__init__()
        self.base_layer = mixer
        self.kind = mixer_kind(mixer)
        self.method = method
        self.decodes_like_base = decodes_like_base
        for name in STATE_TENSORS:
            self.register_parameter(name, None)

    def add(self, name: str, value: Tensor) -> None:
        """Register ``value`` as the trainable fp32 state tensor ``name`` (no weight decay: these
        are states and offsets, as the reference marks them)."""
        if name not in STATE_TENSORS:
            raise ValueError(f"unknown state tensor {name!r}")
        param = nn.Parameter(value.to(torch.float32))
        setattr(param, NO_DECAY_ATTR, True)
        setattr(self, name, param)

    @property
    def layer_idx(self) -> int:
        return self.base_layer.layer_idx

    def forward(self, hidden_states: Tensor, cache=None, attention_mask: Tensor | None = None,
                **kwargs) -> Tensor:  # fmt: skip
        if cache is not None and cache.get_conv_state(self.layer_idx) is not None:
            return self._continue(hidden_states, cache, attention_mask, **kwargs)
        return FORWARDS[self.kind](self.base_layer, self, hidden_states, attention_mask, cache)

    def _continue(self, hidden_states: Tensor, cache, attention_mask, **kwargs) -> Tensor:
        """A step after a prefill (the cache holds this layer's states)."""
        decoding = hidden_states.shape[1] == 1 and not cache.is_recording_past(self.layer_idx)
        if decoding and self.decodes_like_base:
            return self.base_layer(hidden_states, cache=cache, attention_mask=attention_mask,
                                   **kwargs)  # fmt: skip
        raise SsmloraError(
            f"{self.method} adapters act on the SSM at every step; KV-cached decoding with them is "
            "not implemented. Use a classification or teacher-forced objective, or an adapter "
            "that decodes with a cache (lora, sdt, init_state, ssm_prefix)."
        )


def wrap_mixers(
    model: nn.Module,
    config: AdapterConfig,
    skip: Sequence[str],
    method: str,
    build: Callable[[MambaStateAdapter], None],
    decodes_like_base: bool,
) -> list[str]:
    """Put a :class:`MambaStateAdapter` in place of every mixer ``config`` selects; ``build``
    adds the method's tensors to each. Returns the adapted mixer names."""
    names = []
    for name, mixer in require_mixers(model, config, skip, method):
        adapter = MambaStateAdapter(mixer, method, decodes_like_base)
        with torch.device(mixer.A_log.device):
            build(adapter)
        replace_module(model, name, adapter)
        names.append(name)
    _note_fused_kernels(model, method)
    return names


def state_shape(mixer: nn.Module) -> tuple[int, ...]:
    """Shape of one layer's SSM state: ``(D, N)`` (Mamba-1) or ``(H, P, N)`` (Mamba-2)."""
    if mixer_kind(mixer) == "mamba":
        return tuple(mixer.A_log.shape)
    return (mixer.num_heads, mixer.head_dim, mixer.ssm_state_size)


def conv_channels(mixer: nn.Module) -> int:
    """Channels of the mixer's causal convolution (Mamba-1: ``D``; Mamba-2: ``I + 2GN``)."""
    return mixer.conv1d.weight.shape[0]


def kaiming_rows(rows: int, cols: int) -> Tensor:
    """``(rows, cols)`` kaiming-uniform (a=√5), ``nn.Linear``'s default init."""
    weight = torch.empty(rows, cols)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


def _note_fused_kernels(model: nn.Module, method: str) -> None:
    """One log line where HF would otherwise use fused Mamba kernels in training."""
    from transformers.models.mamba import modeling_mamba

    if getattr(modeling_mamba.mamba_inner_fn, "__module__", "").startswith("mamba_ssm"):
        log.warning(
            "%s runs Mamba's mixer on the pure-PyTorch path (the fused mamba_inner_fn cannot take "
            "its state terms); the selective-scan kernels are still used inside it.",
            method,
        )
