"""Initial-state tuning on Mamba-1 / Mamba-2 (the PEFT-of-SSMs benchmark, Galim et al. 2025,
arXiv 2410.09016; its repository's ``init_state`` rows): a trainable initial SSM state per layer,
optionally with the causal convolution's initial inputs.

The selective scan starts from ``h_{−1} = θ`` instead of zeros (Mamba paper eq. 2a,
``h_t = Ā_t h_{t−1} + B̄_t x_t``), so ``y_t`` gains ``C_t (∏_{s≤t} Ā_s) θ``: the state a prompt
would have left behind, learnt directly (the paper's analysis: prefix-tuning on an SSM reaches
the real tokens only through this state). ``θ`` is ``(D, N)`` per layer on Mamba-1 (Mamba-130M:
24 · 1536 · 16 = 589,824) and ``(H, P, N)`` on Mamba-2 (the SSD state). ``conv_state`` adds the
``k−1`` convolution inputs before the first token, ``(D, k−1)`` per layer on Mamba-1 (Mamba-130M:
+110,592) and ``(I + 2GN, k−1)`` on Mamba-2 (the conv runs over x, B and C there). Both start at
zero (the reference's ``init: zero``), so the adapter changes nothing at init.

It is the state before position 0: use right padding (the default), or pad positions before the
text would decay it. Runs on the pure-PyTorch path (:mod:`~ssmlora_app.adapters.mamba_state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.mamba_state import conv_channels, state_shape, wrap_mixers
from ssmlora_app.adapters.mamba_targets import needs_mamba
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter


@dataclass
class InitialStateConfig(AdapterConfig):
    """Initial-state tuning: a trainable initial SSM state in every Mamba mixer (``target_modules``
    is not used; ``layers_to_transform``/``exclude_modules`` choose the mixers)."""

    adapter_type: ClassVar[str] = "init_state"

    conv_state: bool = False
    """Also train the convolution's ``k−1`` inputs before the first token (the reference's
    ``conv_init_state``)."""


def inject_init_state(
    model: nn.Module, config: InitialStateConfig, skip: Sequence[str]
) -> list[str]:
    def build(adapter) -> None:
        mixer = adapter.base_layer
        adapter.add("initial_state", torch.zeros(state_shape(mixer)))
        if config.conv_state:
            k = mixer.conv1d.weight.shape[-1]
            adapter.add("conv_state", torch.zeros(conv_channels(mixer), k - 1))

    return wrap_mixers(model, config, skip, "init_state", build, decodes_like_base=True)


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    needs_mamba(model, "init_state")
    return {
        "init_state": InitialStateConfig(),
        "init_state_conv": InitialStateConfig(conv_state=True),
    }


register_adapter(AdapterMethod(InitialStateConfig, inject_init_state, bench=_bench))
