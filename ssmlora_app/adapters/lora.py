"""LoRA (Hu et al. 2021, arXiv 2106.09685), numerically equal to ``peft``'s LoRA.

``y = x W0ᵀ + s · B(A(dropout(x)))`` (LoRA paper eq. 3, ``h = W0 x + ΔW x = W0 x + B A x``) with
``A: d_in→r`` (kaiming-uniform, a=√5), ``B: r→d_out`` (zeros, so the adapter is exactly zero at
init) and ``s = alpha/r`` (LoRA paper §4.1; ``alpha/√r`` with rsLoRA, Kalajdzievski 2023). One
implementation, :class:`LoRAFactors`, carried by one of two mechanisms chosen per target:

* **wrap** (:class:`LoRALinear`): the linear is replaced by a module holding it as ``base_layer``
  and adding the low-rank path to its output. Every target whose owner calls it as a module.
* **re-parametrise** (:class:`LoRAWeight`): ``weight`` itself becomes ``W0 + s·B·A``
  (``torch.nn.utils.parametrize``), for targets whose owner reads ``.weight`` directly instead of
  calling the layer: Mamba's mixers hand ``in_proj.weight``, ``x_proj.weight`` and
  ``out_proj.weight`` straight to their fused kernels, bypassing any wrapper. There is no input
  to drop, so dropout must be 0 there. SDT's LoRA (:mod:`ssmlora_app.adapters.sdt`) is this one.

Attribute names (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``) follow ``peft`` so
saved keys load into ``peft`` unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from transformers.pytorch_utils import Conv1D

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.adapters.targets import (
    find_config_targets,
    linear_dims,
    reads_weight_directly,
    replace_module,
)
from ssmlora_app.errors import SsmloraError
from ssmlora_app.linalg import add_product_, rank_major


def lora_scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """``s = alpha/r`` (LoRA paper §4.1), or ``alpha/√r`` (rank-stabilised LoRA)."""
    return alpha / (math.sqrt(r) if rslora else r)


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
    """Dropout on the adapter's input ``x`` (0 disables it and saves its activation memory).
    Must be 0 on targets that are re-parametrised (Mamba's projections)."""

    use_rslora: bool = False
    """Scale by ``alpha/√r`` (rank-stabilised LoRA) instead of ``alpha/r``."""

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise SsmloraError(f"LoRA rank r must be a positive integer, got r={self.r!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise SsmloraError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        if self.alpha == 0:
            raise SsmloraError(
                "LoRA alpha=0 scales the update alpha/r to zero: the adapter would learn nothing "
                "(the LoRA paper's GLUE recipe: alpha=16 at r=8)."
            )
        if self.target_modules is None:
            raise SsmloraError("LoRAConfig.target_modules is required (e.g. [query, value]).")

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.r, self.use_rslora)


class LoRAFactors(AdapterLayer):
    """The LoRA update ``s·B·A`` of a ``(d_out, d_in)`` weight: ``lora_A: d_in→r`` and
    ``lora_B: r→d_out`` (``nn.Linear`` without bias, fp32, on ``device``)."""

    def __init__(self, d_in: int, d_out: int, r: int, scaling: float, device=None):
        super().__init__()
        self.lora_A = nn.Linear(d_in, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, d_out, bias=False, device=device, dtype=torch.float32)
        self.scaling = scaling
        self.merged = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> Tensor:
        """``s·B·A``, ``(d_out, d_in)``, fp32."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


class LoRALinear(LoRAFactors):
    """A frozen ``nn.Linear``/``Conv1D`` plus a trainable fp32 low-rank update (the wrap mechanism).

    Input ``x``: ``(..., d_in)``; output ``(..., d_out)``, in the base layer's dtype.
    """

    def __init__(self, base_layer: nn.Module, r: int, alpha: float, dropout: float, rslora: bool):
        d_in, d_out = linear_dims(base_layer)
        super().__init__(d_in, d_out, r, lora_scaling(alpha, r, rslora), base_layer.weight.device)
        self.base_layer = base_layer
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _delta_like_base(self) -> Tensor:
        """:meth:`delta_weight` laid out like the base weight (``(d_in, d_out)`` for Conv1D)."""
        delta = self.delta_weight()
        return delta.T if isinstance(self.base_layer, Conv1D) else delta

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self.base_layer.weight
            weight += self._delta_like_base().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self.base_layer.weight
            weight -= self._delta_like_base().to(weight.dtype)
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base_layer(x)
        # Rows of tokens (N, ·): the base output is then the very tensor the product is added
        # into in place (an in-place op on a view of it would make autograd clone the whole
        # (N, d_out) gradient in backward).
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # (N, d_in), a view of a contiguous input
        result = self.base_layer(x)  # (N, d_out)
        u = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))  # (N, r)
        # peft's arithmetic (s · B(A x) plus the base output) as one GEMM, result += s · u Bᵀ,
        # into the base layer's fresh output (a linear's backward needs no output): no
        # (N, d_out) product, scaled copy or sum is allocated, and the backward scales the thin
        # gradients. Bᵀ is laid out rank-major (see linalg): on CPU that halves its backward.
        B_t = rank_major(self.lora_B.weight.T)  # (r, d_out)
        return add_product_(result, u, B_t, self.scaling).view(*lead, -1)


class LoRAWeight(LoRAFactors):
    """Parametrization ``W ↦ W + s·B·A`` of a linear ``weight (d_out, d_in)`` (the
    re-parametrisation mechanism); the update is cast to the weight's dtype.

    ``pruned`` (a buffer of input columns, empty unless set, see SDT's ``num_zero``) is masked to
    0 in the effective weight.
    """

    resizable = ("pruned",)  # set by SDT's selection

    def __init__(self, owner: nn.Linear, r: int, alpha: float, rslora: bool = False):
        d_out, d_in = owner.weight.shape
        device = owner.weight.device
        super().__init__(d_in, d_out, r, lora_scaling(alpha, r, rslora), device)
        object.__setattr__(self, "_owner", owner)  # not a submodule: no cycle in modules()
        self.register_buffer("pruned", torch.zeros(0, dtype=torch.long, device=device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in ("lora_A", "lora_B"):  # adapters saved before LoRA had one implementation
            if prefix + name in state_dict:
                state_dict[f"{prefix}{name}.weight"] = state_dict.pop(prefix + name)
        pruned = state_dict.get(prefix + "pruned")
        if pruned is not None and pruned.shape != self.pruned.shape:  # set by SDT's selection
            self.pruned = self.pruned.new_zeros(pruned.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, weight: Tensor) -> Tensor:
        if not self.merged:
            weight = weight + self.delta_weight().to(weight.dtype)
        if self.pruned.numel():
            weight = weight.index_fill(1, self.pruned, 0.0)
        return weight

    def _original(self) -> Tensor:
        return self._owner.parametrizations["weight"].original

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            original = self._original()
            original += self.delta_weight().to(original.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            original = self._original()
            original -= self.delta_weight().to(original.dtype)
            self.merged = False


def add_lora(
    model: nn.Module,
    names: Sequence[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    rslora: bool = False,
    reparametrise: bool | None = None,
) -> None:
    """Put LoRA on each linear of ``names``: re-parametrised where its owner reads ``.weight``
    directly (or everywhere with ``reparametrise=True``), wrapped elsewhere."""
    for name in names:
        base = model.get_submodule(name)
        d_in, d_out = linear_dims(base)
        if r > max(d_in, d_out):  # r > min() is allowed: the papers adapt 768 -> 2 heads
            raise SsmloraError(
                f"LoRA rank r={r} exceeds the width of {name} ({d_in} -> {d_out}); "
                f"choose r <= {max(d_in, d_out)} (typically 4-64)."
            )
        by_weight = reads_weight_directly(model, name) if reparametrise is None else reparametrise
        if not by_weight:
            replace_module(model, name, LoRALinear(base, r, alpha, dropout, rslora))
            continue
        if dropout:
            raise SsmloraError(
                f"LoRA dropout={dropout} on {name}: its owner reads {name}.weight directly (the "
                "fused Mamba kernels do), so LoRA is a weight re-parametrisation there, which has "
                "no input to drop. Set dropout: 0."
            )
        if not isinstance(base, nn.Linear):
            raise SsmloraError(f"LoRA re-parametrises nn.Linear weights; {name} is {type(base)}.")
        parametrize.register_parametrization(base, "weight", LoRAWeight(base, r, alpha, rslora))


def inject_lora(model: nn.Module, config: LoRAConfig, skip: Sequence[str]) -> list[str]:
    """LoRA on every target linear of ``model`` (see the module docstring for the mechanism);
    returns the adapted names."""
    names = find_config_targets(model, config, skip)
    add_lora(model, names, config.r, config.alpha, config.dropout, config.use_rslora)
    return names


def peft_config_fields(model: nn.Module, config: LoRAConfig) -> dict | None:
    """The ``peft`` ``LoraConfig`` fields equivalent to ``config`` (for ``adapter_config.json``);
    None when a target is re-parametrised (its keys are not in ``peft``'s layout)."""
    if any(isinstance(m, LoRAWeight) for m in model.modules()):
        return None
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


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    return {"lora": LoRAConfig(r=8, alpha=16, target_modules=list(settings.targets))}


register_adapter(
    AdapterMethod(
        LoRAConfig,
        inject_lora,
        mergeable=True,
        peft_config=peft_config_fields,
        bench=_bench,
    )
)
