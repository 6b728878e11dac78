"""Layer freeze on Mamba-1 / Mamba-2: full fine-tuning of a chosen subset of the backbone's
tensors, everything else frozen (the PEFT-of-SSMs benchmark's ``LAYER_FREEZE`` rows, Galim et al.
2025, arXiv 2410.09016: ``A_log``, ``x_proj``, ``dt_proj``, ``D``, ``conv1d``, ``D`` + norms, ...).

Whole tensors are simply unfrozen (what trains is the model's own tensor, saved with the adapter).
A row part of a fused projection (``x_proj_B``, ``in_proj_x``, ... see
:mod:`~ssmlora_app.adapters.mamba_targets`) gets a dense zero-initialised delta on those rows as a
weight re-parametrisation, which is full tuning of those rows and nothing else. Either way the
model is unchanged at init and mergeable. Counts on Mamba-130M (24 layers, D 1536, N 16, R 48):
``A_log`` 589,824; ``x_proj`` 2,949,120; ``dt_proj`` 1,806,336 (weight and bias); ``conv1d``
184,320 (weight and bias); ``D`` + ``norm`` + ``norm_f`` 56,064.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.mamba_targets import (
    Part,
    mixer_kind,
    mixer_parts,
    needs_mamba,
    require_mixers,
)
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import NO_DECAY_ATTR

MIXER_TENSORS = ("A_log", "D", "dt_bias")
"""Mixer parameters trained whole by name (``dt_bias``: Mamba-2 only)."""
MIXER_MODULES = ("in_proj", "x_proj", "dt_proj", "out_proj", "conv1d")
"""Mixer submodules trained whole (weight and bias)."""
MODEL_PARTS = ("norm", "mixer_norm", "norm_f", "embeddings")
"""``norm``: each block's RMSNorm before the mixer; ``mixer_norm``: Mamba-2's gated RMSNorm in the
mixer; ``norm_f``: the final norm; ``embeddings``: the token embedding."""


@dataclass
class LayerFreezeConfig(AdapterConfig):
    """Layer freeze: the named backbone tensors train fully, the rest stays frozen
    (``layers_to_transform``/``exclude_modules`` choose the mixers)."""

    adapter_type: ClassVar[str] = "layer_freeze"

    trainable: list[str] = field(default_factory=lambda: ["A_log"])
    """What trains: mixer tensors ``A_log``, ``D``, ``dt_bias`` (Mamba-2); mixer modules
    ``in_proj``, ``x_proj``, ``dt_proj``, ``out_proj``, ``conv1d``; row parts ``in_proj_x``,
    ``in_proj_z``, ``x_proj_dt``, ``x_proj_B``, ``x_proj_C`` (Mamba-1), ``in_proj_z``,
    ``in_proj_x``, ``in_proj_B``, ``in_proj_C``, ``in_proj_dt`` (Mamba-2); and ``norm``,
    ``mixer_norm`` (Mamba-2), ``norm_f``, ``embeddings``."""

    def validate(self) -> None:
        if not isinstance(self.trainable, list) or not self.trainable:
            raise SsmloraError(
                "LayerFreezeConfig.trainable must name at least one tensor (e.g. [A_log])."
            )


class RowDelta(AdapterLayer):
    """Parametrization ``W ↦ W + Δ`` on the rows ``[start, stop)`` of a weight, ``Δ`` zeros."""

    def __init__(self, module: nn.Module, part: Part):
        super().__init__()
        weight = module.weight
        self.start, self.stop = part.start, part.stop
        rows = weight.detach()[part.start : part.stop]
        self.delta = nn.Parameter(torch.zeros(rows.shape, device=weight.device))
        object.__setattr__(self, "_owner", module)
        self.merged = False

    def forward(self, weight: Tensor) -> Tensor:
        if self.merged:
            return weight
        rows = weight[self.start : self.stop] + self.delta.to(weight.dtype)
        return torch.cat([weight[: self.start], rows, weight[self.stop :]])

    def _original(self) -> Tensor:
        return self._owner.parametrizations["weight"].original

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self._original()[self.start : self.stop] += self.delta.to(self._original().dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._original()[self.start : self.stop] -= self.delta.to(self._original().dtype)
            self.merged = False


def _unfreeze(module: nn.Module, name: str) -> None:
    param = getattr(module, name)
    param.requires_grad_(True)
    setattr(param, NO_DECAY_ATTR, True)  # A_log, D, dt_bias: no weight decay, as in Mamba


def inject_layer_freeze(
    model: nn.Module, config: LayerFreezeConfig, skip: Sequence[str]
) -> list[str]:
    """Unfreeze (or re-parametrise, for row parts) what ``config.trainable`` names."""
    names = []
    mixers = require_mixers(model, config, skip, "layer_freeze")
    for name, mixer in mixers:
        parts = mixer_parts(mixer)
        known = {*MIXER_TENSORS, *MIXER_MODULES, *parts, *MODEL_PARTS}
        unknown = sorted(set(config.trainable) - known)
        if unknown:
            raise SsmloraError(
                f"layer_freeze: unknown trainable {unknown}; choose from {sorted(known)}."
            )
        for item in config.trainable:
            if item in MIXER_TENSORS:
                if not hasattr(mixer, item):
                    raise SsmloraError(f"layer_freeze: {type(mixer).__name__} has no {item}.")
                _unfreeze(mixer, item)
            elif item in MIXER_MODULES or item == "mixer_norm":
                module = getattr(mixer, "norm" if item == "mixer_norm" else item, None)
                if module is None:
                    raise SsmloraError(f"layer_freeze: {type(mixer).__name__} has no {item}.")
                module.requires_grad_(True)
            elif item == "norm":
                model.get_submodule(name.rpartition(".")[0]).norm.requires_grad_(True)
            elif item in parts:
                module = getattr(mixer, parts[item].module)
                parametrize.register_parametrization(
                    module, "weight", RowDelta(module, parts[item])
                )
            else:
                continue
            names.append(f"{name}.{item}")
    for item in {"norm_f", "embeddings"} & set(config.trainable):
        found = [n for n, _ in model.named_modules() if n.rpartition(".")[2] == item]
        if not found:
            raise SsmloraError(f"layer_freeze: {type(model).__name__} has no {item}.")
        for module_name in found:
            model.get_submodule(module_name).requires_grad_(True)
            names.append(module_name)
    return names


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    needs_mamba(model, "layer_freeze")
    kind = next(mixer_kind(m) for m in model.modules() if mixer_kind(m))
    rows = ["x_proj_B", "dt_proj"] if kind == "mamba" else ["in_proj_B", "dt_bias"]
    return {
        "layer_freeze_A_log": LayerFreezeConfig(trainable=["A_log"]),
        "layer_freeze_mix": LayerFreezeConfig(trainable=[*rows, "conv1d", "D", "norm", "norm_f"]),
    }


register_adapter(
    AdapterMethod(LayerFreezeConfig, inject_layer_freeze, mergeable=True, bench=_bench)
)
