"""Prefix-tuning for SSMs (the PEFT-of-SSMs benchmark's prompt-based baseline, Galim et al. 2025,
arXiv 2410.09016; prefix-tuning: Li & Liang 2021, arXiv 2101.00190).

A Mamba layer has no keys and values to prepend to; what it carries from earlier positions is its
convolution window and its SSM state. So, as the benchmark's reference code does, every mixer
gets ``M`` trainable *virtual positions* in front of the sequence, in its projected input (after
``in_proj``, before the convolution), and their outputs are dropped before ``out_proj``; the real
tokens see them only through the conv window and the state they leave (the paper's argument why
prefix-tuning on SSMs amounts to a restricted initial-state tuning).

Mamba-1: the virtual positions are values of the SSM branch ``x``, ``(M, D)`` per layer
(Mamba-130M, M=16: 24 · 16 · 1536 = 589,824); the gate ``z`` there is never used. Mamba-2 (the
choice its structure needs): Δ comes from ``in_proj`` beside x, B and C, so the virtual positions
hold all four, ``(M, I + 2GN + H)`` per layer. Not zero at init, as any prefix: even zero virtual
positions leave a state behind through the conv bias. Right padding (the
default) keeps the prefix next to the text. Runs on the pure-PyTorch path
(:mod:`~ssmlora_app.adapters.mamba_state`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.mamba_state import conv_channels, wrap_mixers
from ssmlora_app.adapters.mamba_targets import needs_mamba
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.errors import SsmloraError


@dataclass
class SSMPrefixConfig(AdapterConfig):
    """Prefix-tuning for SSMs: trainable virtual positions before the sequence in every Mamba
    mixer (``target_modules`` is not used)."""

    adapter_type: ClassVar[str] = "ssm_prefix"

    num_virtual_tokens: int = 16
    """``M``, the virtual positions per layer."""

    init_std: float = 0.02
    """Standard deviation of their normal initialisation (0.02: HF's ``initializer_range``, the
    scale of a fresh Mamba's own weights; 0: zeros, which changes nothing where the conv bias is
    zero, e.g. a randomly initialised Mamba, but does on pretrained ones)."""

    def validate(self) -> None:
        if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens < 1:
            raise SsmloraError(
                "SSMPrefixConfig.num_virtual_tokens must be a positive integer, got "
                f"{self.num_virtual_tokens!r}."
            )
        if self.init_std < 0:
            raise SsmloraError(f"SSMPrefixConfig.init_std must be ≥ 0, got {self.init_std}.")


def prefix_width(mixer: nn.Module, kind: str) -> int:
    """Width of one virtual position: ``D`` (Mamba-1), ``I + 2GN + H`` (Mamba-2)."""
    return mixer.intermediate_size if kind == "mamba" else conv_channels(mixer) + mixer.num_heads


def inject_ssm_prefix(model: nn.Module, config: SSMPrefixConfig, skip: Sequence[str]) -> list[str]:
    def build(adapter) -> None:
        shape = (config.num_virtual_tokens, prefix_width(adapter.base_layer, adapter.kind))
        adapter.add(
            "prefix",
            torch.randn(shape) * config.init_std if config.init_std else torch.zeros(shape),
        )

    return wrap_mixers(model, config, skip, "ssm_prefix", build, decodes_like_base=True)


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    needs_mamba(model, "ssm_prefix")
    return {"ssm_prefix": SSMPrefixConfig(**dict(settings.options))}


register_adapter(
    AdapterMethod(SSMPrefixConfig, inject_ssm_prefix, identity_at_init=False, bench=_bench)
)
