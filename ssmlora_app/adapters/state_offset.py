"""State-offset tuning on Mamba-1 / Mamba-2 (Kang et al. 2025, "State-offset Tuning", arXiv
2503.03499, the follow-up of the PEFT-of-SSMs benchmark by the same group): a trainable offset
``h'`` added to the SSM state at every step as it is read out,

    ``y_t = C_t (h_t + h') + D x_t``      (State-offset Tuning eq. 5, before the SiLU(z) gate)

``h'`` is ``(D, N)`` per layer on Mamba-1 (Mamba-130M: 24 · 1536 · 16 = 589,824) and ``(H, P, N)``
on Mamba-2. ``mode: output`` is the paper's "output tuning" baseline instead: a bias ``b``
``(D,)`` (Mamba-2: ``(I,)``) with ``y_t += b`` before the gate. Both start at zero, so the adapter
changes nothing at init. Unlike an initial state, the offset acts at every step, so it does not
fade along the sequence. Runs on the pure-PyTorch path
(:mod:`~ssmlora_app.adapters.mamba_state`); KV-cached decoding is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.mamba_state import state_shape, wrap_mixers
from ssmlora_app.adapters.mamba_targets import needs_mamba
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.errors import SsmloraError

MODES = ("state", "output")


@dataclass
class StateOffsetConfig(AdapterConfig):
    """State-offset tuning: a trainable offset of the SSM state read out at every step, in every
    Mamba mixer (``target_modules`` is not used)."""

    adapter_type: ClassVar[str] = "state_offset"

    mode: str = "state"
    """``state``: ``y_t += C_t h'`` (state-offset tuning); ``output``: ``y_t += b`` (output
    tuning, the paper's ablation)."""

    def validate(self) -> None:
        if self.mode not in MODES:
            raise SsmloraError(
                f"StateOffsetConfig.mode must be one of {list(MODES)}, got {self.mode!r}."
            )


def inject_state_offset(
    model: nn.Module, config: StateOffsetConfig, skip: Sequence[str]
) -> list[str]:
    def build(adapter) -> None:
        mixer = adapter.base_layer
        if config.mode == "state":
            adapter.add("state_offset", torch.zeros(state_shape(mixer)))
        else:
            adapter.add("output_bias", torch.zeros(mixer.intermediate_size))

    return wrap_mixers(model, config, skip, "state_offset", build, decodes_like_base=False)


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    needs_mamba(model, "state_offset")
    return {"state_offset": StateOffsetConfig(), "output_tuning": StateOffsetConfig(mode="output")}


register_adapter(AdapterMethod(StateOffsetConfig, inject_state_offset, bench=_bench))
