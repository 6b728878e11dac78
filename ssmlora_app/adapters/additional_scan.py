"""Additional-scan on Mamba-1 / Mamba-2 (Yoshimura et al., "MambaPEFT", ICLR 2025, arXiv
2411.03855; a row of the PEFT-of-SSMs benchmark, arXiv 2410.09016): ``n`` extra state dimensions
per channel with their own trainable ``A``, ``B`` and ``C``, scanned beside the frozen ones,

    ``h'_t = exp(Δ_t A') h'_{t−1} + Δ_t B'_t x_t,   y_t += C'_t h'_t``

(the frozen ``N`` states are untouched: A is diagonal, so the extra states never mix with them).
Mamba-1: ``A'_log (D, n)`` starts as a copy of ``A_log``'s last column, ``B' = W_B x`` and
``C' = W_C x`` are new rows of ``x_proj`` (``(n, D)`` each; ``W_B`` kaiming-uniform, ``W_C``
zeros, as the reference's ``DIM_EXTEND`` initialises them), so the adapter is zero at init:
``3·D·n`` per layer (Mamba-130M, n=8: 884,736).

Mamba-2 (the choice its structure needs): A is one scalar per head, so the extra states share
their head's decay; B and C come per group from ``in_proj``, so the extra rows are new rows of
``in_proj`` (``(G·n, D_m)`` each, SiLU as for B and C, no convolution: the identity kernel):
``2·G·n·D_m`` per layer. Runs on the pure-PyTorch path (:mod:`~ssmlora_app.adapters.mamba_state`);
KV-cached decoding is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.mamba_state import kaiming_rows, wrap_mixers
from ssmlora_app.adapters.mamba_targets import needs_mamba
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.errors import SsmloraError


@dataclass
class AdditionalScanConfig(AdapterConfig):
    """Additional-scan: extra trainable state dimensions in every Mamba mixer's selective scan
    (``target_modules`` is not used)."""

    adapter_type: ClassVar[str] = "additional_scan"

    extra_states: int = 8
    """``n``, the extra state dimensions per channel (Mamba-2: per group); the reference's
    ``d_state: 8``."""

    def validate(self) -> None:
        if not isinstance(self.extra_states, int) or self.extra_states < 1:
            raise SsmloraError(
                f"AdditionalScanConfig.extra_states must be a positive integer, got {self.extra_states!r}."
            )


def inject_additional_scan(
    model: nn.Module, config: AdditionalScanConfig, skip: Sequence[str]
) -> list[str]:
    n = config.extra_states

    def build(adapter) -> None:
        mixer = adapter.base_layer
        if adapter.kind == "mamba":
            d = mixer.intermediate_size
            adapter.add("extra_A_log", mixer.A_log.detach()[:, -1:].repeat(1, n))
            adapter.add("extra_B", kaiming_rows(n, d))
            adapter.add("extra_C", torch.zeros(n, d))
        else:
            rows = mixer.n_groups * n
            adapter.add("extra_B", kaiming_rows(rows, mixer.hidden_size))
            adapter.add("extra_C", torch.zeros(rows, mixer.hidden_size))

    return wrap_mixers(model, config, skip, "additional_scan", build, decodes_like_base=False)


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    needs_mamba(model, "additional_scan")
    return {"additional_scan": AdditionalScanConfig(**dict(settings.options))}


register_adapter(AdapterMethod(AdditionalScanConfig, inject_additional_scan, bench=_bench))
