"""A throwaway adapter written from outside the package, in one file: (IA)³ (Liu et al. 2022,
arXiv 2205.05638: ``y = l ⊙ (W x + b)``), a learned vector rescaling each target's
outputs, initialised to ones. Importing this file registers it as ``ia3``; the adapter battery
(tests/test_adapter_battery.py) then runs every check on it, through fit, export, sweep and bench.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ssmlora_app.adapters import AdapterConfig, AdapterLayer, AdapterMethod, register_adapter
from ssmlora_app.adapters.targets import find_config_targets, linear_dims, replace_module


@dataclass
class IA3Config(AdapterConfig):
    """(IA)³ on linear layers: their outputs are rescaled by a learned vector."""

    adapter_type: ClassVar[str] = "ia3"

    target_modules: str | list[str] | None = field(default_factory=lambda: ["key", "value"])
    """Linears whose outputs are rescaled (see :class:`AdapterConfig`)."""


class IA3Linear(AdapterLayer):
    """``y = l ⊙ base_layer(x)``, ``l (d_out,)`` fp32, ones at init."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        _, d_out = linear_dims(base_layer)
        self.ia3_l = nn.Parameter(torch.ones(d_out, device=base_layer.weight.device))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        return y if self.merged else (y * self.ia3_l).to(y.dtype)

    @torch.no_grad()
    def _scale(self, factor: torch.Tensor) -> None:
        self.base_layer.weight.mul_(factor[:, None].to(self.base_layer.weight.dtype))
        if self.base_layer.bias is not None:
            self.base_layer.bias.mul_(factor.to(self.base_layer.bias.dtype))

    def merge(self) -> None:
        if not self.merged:
            self._scale(self.ia3_l)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._scale(1 / self.ia3_l)
            self.merged = False


def inject_ia3(model: nn.Module, config: IA3Config, skip: Sequence[str]) -> list[str]:
    names = find_config_targets(model, config, skip, types=(nn.Linear,))
    for name in names:
        replace_module(model, name, IA3Linear(model.get_submodule(name)))
    return names


register_adapter(AdapterMethod(IA3Config, inject_ia3, mergeable=True))
