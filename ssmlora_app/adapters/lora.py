"""LoRA (Hu et al. 2021, arXiv 2106.09685), numerically equal to ``peft``'s LoRA.

``y = x W0ᵀ + s · B(A(dropout(x)))`` (spec §1) with ``A: d_in→r`` (kaiming-uniform, a=√5),
``B: r→d_out`` (zeros, so the adapter is exactly zero at init) and ``s = alpha/r``
(``alpha/√r`` with rsLoRA). Attribute names (``base_layer``, ``lora_A``, ``lora_B``,
``lora_dropout``) follow ``peft`` so saved keys load into ``peft`` unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.targets import find_config_targets, linear_dims, replace_module
from ssmlora_app.errors import SsmloraError
from ssmlora_app.linalg import thin_matmul


@dataclass
class LoRAConfig(AdapterConfig):
    """LoRA on linear layers (defaults: the LoRA paper's RoBERTa GLUE recipe, r=8, alpha=16, q/v)."""

    adapter_type: ClassVar[str] = "lora"

    target_modules: str | list[str] | None = field(default_factory=lambda: ["query", "value"])
    """Modules to adapt (see :class:`AdapterConfig`); default: attention query and value."""

    r: int = 8
    """Rank of the update ``B·A``."""

    alpha: float = 16.0
    """Scale numerator: the update is multiplied by ``alpha/r`` (``alpha/√r`` with rsLoRA)."""

    dropout: float = 0.0
    """Dropout on the adapter's input ``x`` (0 disables it and saves its activation memory)."""

    use_rslora: bool = False
    """Scale by ``alpha/√r`` (rank-stabilised LoRA) instead of ``alpha/r``."""

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise SsmloraError(f"LoRA rank r must be a positive integer, got r={self.r!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise SsmloraError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        if self.target_modules is None:
            raise SsmloraError("LoRAConfig.target_modules is required (e.g. [query, value]).")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


class LoRALinear(AdapterLayer):
    """A frozen ``nn.Linear``/``Conv1D`` plus a trainable fp32 low-rank update.

    Input ``x``: ``(..., d_in)``; output ``(..., d_out)``, in the base layer's dtype.
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float, rslora: bool):
        super().__init__()
        self.base_layer = base_layer
        d_in, d_out = linear_dims(base_layer)
        device = base_layer.weight.device
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(d_in, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, d_out, bias=False, device=device, dtype=torch.float32)
        self.scaling = alpha / (math.sqrt(r) if rslora else r)
        self.merged = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """``s·B·A`` laid out like the base weight: ``(d_out, d_in)``, or ``(d_in, d_out)`` for Conv1D."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return delta.T if isinstance(self.base_layer, Conv1D) else delta

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self.base_layer.weight
            weight += self.delta_weight().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            weight -= self.delta_weight().to(weight.dtype)
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        x = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        # Same arithmetic as peft (B(A x), times s, plus the base output), but the scale and the
        # sum run in place on fresh buffers: neither is saved for backward (a linear's and a
        # scalar product's backward need no output), so this saves two (..., d_out) temporaries.
        # B's product goes through thin_matmul (B stored rank-major for the product): on CPU
        # that halves its backward; peft calls lora_B as an nn.Linear.
        u = self.lora_A(x)  # (..., r)
        delta = thin_matmul(u, self.lora_B.weight.T).mul_(self.scaling).to(result.dtype)
        return result.add_(delta)


def inject_lora(model: nn.Module, config: LoRAConfig, skip: list[str]) -> list[str]:
    """Wrap every target layer of ``model`` in :class:`LoRALinear`; returns the wrapped names."""
    if getattr(getattr(model, "config", None), "model_type", None) in ("mamba", "mamba2"):
        raise SsmloraError(
            "LoRAConfig wraps layers, and Mamba's mixer reads out_proj.weight (and x_proj.weight) "
            "directly, bypassing any wrapper. For LoRA on Mamba use SDTConfig with "
            "sparse_targets: [] (LoRA as a weight re-parametrisation that every path sees)."
        )
    names = find_config_targets(model, config, skip)
    for name in names:
        base = model.get_submodule(name)
        d_in, d_out = linear_dims(base)
        if config.r > max(d_in, d_out):  # r > min() is allowed: the papers adapt 768 -> 2 heads
            raise SsmloraError(
                f"LoRA rank r={config.r} exceeds the width of {name} ({d_in} -> {d_out}); "
                f"choose r <= {max(d_in, d_out)} (typically 4-64)."
            )
        replace_module(
            model, name, LoRALinear(base, config.r, config.alpha, config.dropout, config.use_rslora)
        )
    return names


def peft_config_fields(config: LoRAConfig) -> dict:
    """The ``peft`` ``LoraConfig`` fields equivalent to ``config`` (for ``adapter_config.json``)."""
    return {
        "peft_type": "LORA",
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora,
        "target_modules": config.target_modules,
        "layers_to_transform": config.layers_to_transform,
        "layers_pattern": config.layers_pattern,
        "exclude_modules": config.exclude_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
    }
