"""LoRA and DoRA on any part of Mamba-1 / Mamba-2 mixers, and on the token embedding (the
PEFT-of-SSMs benchmark's LoRA rows, Galim et al. 2025, arXiv 2410.09016: ``in_proj`` split in its
x/z halves, ``x_proj`` in its Δ/B/C rows, ``dt_proj``, ``out_proj``, ``conv1d``, ``embedding``).

Each part (:mod:`~ssmlora_app.adapters.mamba_targets`) is a row block ``W (rows, cols)`` of a
mixer tensor; its update is a weight re-parametrisation, so HF's fused kernels, which read
``.weight`` directly, see it too:

* LoRA (LoRA paper eq. 3): ``W' = W + s·B·A``, ``A (r, cols)`` kaiming-uniform, ``B (rows, r)``
  zeros, ``s = alpha/r`` (rsLoRA ``alpha/√r``): ``r·(rows + cols)`` per part.
* DoRA (Liu et al. 2024, arXiv 2402.09353, eq. 5): ``W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖`` with
  the norm of each row (an output of the part) and ``m (rows,)`` initialised to ``‖W‖``, so it
  starts at ``W``; the norm is detached from the gradient, as DoRA §4.3 and ``peft`` do:
  ``r·(rows + cols) + rows`` per part.

``conv1d``'s depthwise kernel ``(C, 1, k)`` is the matrix ``(C, k)`` here (its rank is at most
``k``; ``peft`` cannot adapt a depthwise conv that the mixer reads by weight). The embedding is
wrapped (HF calls it as a module): ``E' = E + s·(B·A)ᵀ`` with ``A (r, V)``, ``B (D_m, r)``, LoRA
only. Every part starts at exactly the frozen weight and is mergeable. No dropout: a weight
re-parametrisation has no input to drop (the reference used 0.1).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.lora import LoRAFactors, lora_scaling
from ssmlora_app.adapters.mamba_targets import (
    Part,
    mixer_kind,
    needs_mamba,
    parts_of,
    require_mixers,
)
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.adapters.targets import find_targets, replace_module
from ssmlora_app.errors import SsmloraError

EMBEDDINGS = "embeddings"
"""The target name of the token embedding (HF Mamba's ``backbone.embeddings``)."""


@dataclass
class MambaLoRAConfig(AdapterConfig):
    """LoRA / DoRA on parts of Mamba's mixers (defaults: the benchmark's r=8, alpha=8 on
    ``out_proj``)."""

    adapter_type: ClassVar[str] = "mamba_lora"

    target_modules: str | list[str] | None = field(default_factory=lambda: ["out_proj"])
    """Parts to adapt in every selected mixer. Mamba-1: ``in_proj``, ``in_proj_x``,
    ``in_proj_z``, ``x_proj``, ``x_proj_dt``, ``x_proj_B``, ``x_proj_C``, ``dt_proj``,
    ``out_proj``, ``conv1d``. Mamba-2: ``in_proj``, ``in_proj_z``, ``in_proj_x``, ``in_proj_B``,
    ``in_proj_C``, ``in_proj_dt``, ``out_proj``, ``conv1d``. Both: ``embeddings``."""

    r: int = 8
    """Rank of each update."""

    alpha: float = 8.0
    """Scale numerator: updates are multiplied by ``alpha/r`` (the reference's lora_alpha = r)."""

    use_rslora: bool = False
    """Scale by ``alpha/√r`` instead."""

    use_dora: bool = False
    """DoRA: a trainable magnitude per output row of each part (not on ``embeddings``)."""

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise SsmloraError(f"MambaLoRAConfig.r must be a positive integer, got {self.r!r}.")
        if not isinstance(self.target_modules, list) or not self.target_modules:
            raise SsmloraError(
                "MambaLoRAConfig.target_modules must be a list of mixer parts (e.g. [out_proj, "
                f"in_proj_x, x_proj_B]), got {self.target_modules!r}."
            )
        if self.use_dora and EMBEDDINGS in self.target_modules:
            raise SsmloraError("MambaLoRAConfig: DoRA is not offered on the embeddings; use LoRA.")


def row_norm(weight: Tensor) -> Tensor:
    """L2 norm of each row of ``weight (rows, cols)``, fp32."""
    return torch.linalg.vector_norm(weight.float(), dim=1)


class BlockLoRA(LoRAFactors):
    """Parametrization of a tensor ``(R, ...)`` whose rows ``[start, stop)``, seen as a matrix
    ``(rows, cols)``, become ``W + s·B·A`` (DoRA: rescaled to the magnitude ``m``)."""

    def __init__(self, module: nn.Module, part: Part, r: int, scaling: float, dora: bool):
        weight = module.weight
        rows, cols = part.stop - part.start, weight[0].numel()
        super().__init__(cols, rows, r, scaling, weight.device)
        self.start, self.stop = part.start, part.stop
        object.__setattr__(self, "_owner", module)  # not a submodule: no cycle in modules()
        if dora:
            block = weight.detach()[self.start : self.stop].reshape(rows, cols)
            self.magnitude = nn.Parameter(row_norm(block))
        else:
            self.register_parameter("magnitude", None)

    def block(self, weight: Tensor) -> Tensor:
        """The adapted rows, ``(rows, ...)`` like ``weight``'s."""
        rows = weight[self.start : self.stop]
        matrix = rows.reshape(rows.shape[0], -1)
        adapted = matrix + self.delta_weight().to(matrix.dtype)
        if self.magnitude is not None:
            scale = self.magnitude / row_norm(adapted).detach().clamp_min(1e-12)
            adapted = adapted * scale[:, None].to(adapted.dtype)
        return adapted.reshape(rows.shape)

    def forward(self, weight: Tensor) -> Tensor:
        if self.merged:
            return weight
        return torch.cat([weight[: self.start], self.block(weight), weight[self.stop :]])

    def _original(self) -> Tensor:
        return self._owner.parametrizations["weight"].original

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            original = self._original()
            self._unmerged = original[self.start : self.stop].clone()
            original[self.start : self.stop] = self.block(original)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._original()[self.start : self.stop] = self._unmerged
            self.merged = False


class LoRAEmbedding(LoRAFactors):
    """A frozen ``nn.Embedding (V, D_m)`` plus ``s·(B·A)ᵀ``: token ``i`` gains ``s·B·A[:, i]``."""

    def __init__(self, base_layer: nn.Embedding, r: int, scaling: float):
        vocab, dim = base_layer.weight.shape
        super().__init__(vocab, dim, r, scaling, base_layer.weight.device)
        self.base_layer = base_layer

    def forward(self, ids: Tensor) -> Tensor:
        out = self.base_layer(ids)
        if self.merged:
            return out
        low = F.embedding(ids, self.lora_A.weight.T)  # (..., r)
        return out + (low @ self.lora_B.weight.T * self.scaling).to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self.base_layer.weight
            weight += self.delta_weight().T.to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            weight -= self.delta_weight().T.to(weight.dtype)
            self.merged = False


def _check_disjoint(mixer_name: str, parts: dict[str, Part]) -> None:
    spans = sorted((p.module, p.start, p.stop, name) for name, p in parts.items())
    for (module, _, stop, first), (other, start, _, second) in itertools.pairwise(spans):
        if module == other and start < stop:
            raise SsmloraError(
                f"mamba_lora: parts {first} and {second} of {mixer_name} overlap; name each row "
                "once (e.g. in_proj, or in_proj_x and in_proj_z)."
            )


def inject_mamba_lora(model: nn.Module, config: MambaLoRAConfig, skip: Sequence[str]) -> list[str]:
    """LoRA/DoRA on the named parts of every selected mixer (and the embedding); returns the
    adapted names (``<mixer>.<part>``)."""
    scaling = lora_scaling(config.alpha, config.r, config.use_rslora)
    names = []
    wanted = [t for t in config.target_modules if t != EMBEDDINGS]
    if wanted:
        for name, mixer in require_mixers(model, config, skip, "mamba_lora"):
            parts = parts_of(mixer, wanted, "mamba_lora")
            _check_disjoint(name, parts)
            for part_name, part in parts.items():
                module = getattr(mixer, part.module)
                layer = BlockLoRA(module, part, config.r, scaling, config.use_dora)
                parametrize.register_parametrization(module, "weight", layer)
                names.append(f"{name}.{part_name}")
    if EMBEDDINGS in config.target_modules:
        for name in find_targets(model, [EMBEDDINGS], skip=skip, types=(nn.Embedding,)):
            replace_module(model, name, LoRAEmbedding(model.get_submodule(name), config.r, scaling))
            names.append(name)
    return names


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    needs_mamba(model, "mamba_lora")
    kind = next(mixer_kind(m) for m in model.modules() if mixer_kind(m))
    split = ["in_proj_x", "x_proj_B", "dt_proj"] if kind == "mamba" else ["in_proj_x", "in_proj_B"]
    targets = list(settings.targets)
    return {
        "mamba_lora": MambaLoRAConfig(target_modules=targets),
        "mamba_dora": MambaLoRAConfig(target_modules=targets, use_dora=True),
        "mamba_lora_parts": MambaLoRAConfig(target_modules=[*split, "conv1d", EMBEDDINGS]),
    }


register_adapter(AdapterMethod(MambaLoRAConfig, inject_mamba_lora, mergeable=True, bench=_bench))
