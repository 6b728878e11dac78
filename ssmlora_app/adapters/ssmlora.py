"""SSMLoRA (Yu et al., NAACL 2025, arXiv 2502.04958): LoRA plus a depth-wise state-space term.

Per adapted linear ``W0: d_in → d_out`` (the SSMLoRA paper's module), with ``x`` of shape ``(B, L, d_in)``::

    u     = x W_a                                                 (B, L, r)  LoRA down-projection
    h_new = h_prev (I + W_c) + u W_d                              (B, L, r)  Euler step of h' = W_c h + W_d u
    ĥ     = (h_new − min_r h_new) / (max_r h_new − min_r h_new + eps)   (B, L, r)  per (b, token)
    y     = x W0ᵀ + scale · (u + dropout(ĥ)) W_b                  (B, L, d_out)

``h_prev`` is the state the previous module of the same chain wrote in this forward (zeros at a
chain's first position); the state passed on is ``ĥ`` (or ``h_new``), detached by default. The
chain runs over depth, never over tokens (see :mod:`ssmlora_app.adapters.ssmlora_chain`).
Parameters per module: ``W_a (d_in×r)``, ``W_b (r×d_out)``, ``W_c, W_d (r×r)``, all fp32, no
biases: ``r(d_in + d_out) + 2r²``. Init ``W_a ~ N(0, 1/r)`` (variance 1/r), ``W_b = W_c = W_d =
0``, so the adapter is exactly zero at init. The state update and the normalisation run in fp32
with autocast off (the min-max has a 1/eps gradient while the state is constant, and eps
underflows in fp16). Not mergeable into ``W0``: the state term is a nonlinear function of the
other modules' inputs, not a linear map of ``x``.

Differences from the paper's reference code, all deliberate: the state is per forward and
per (chain, position), never a global carried across batches; ``scale`` defaults to ``alpha/r``
(``scale_mode: alpha`` is the reference's ``alpha``); eps defaults to 1e-5, not 1e-8.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.lora import lora_scaling
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings, Diagnostics
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.adapters.ssmlora_chain import StateChain
from ssmlora_app.adapters.ssmlora_presets import (
    Preset,
    filter_targets,
    preset_modules,
    reference_chains,
)
from ssmlora_app.adapters.targets import (
    find_config_targets,
    linear_dims,
    name_matches,
    replace_module,
)
from ssmlora_app.errors import SsmloraError
from ssmlora_app.linalg import thin_matmul

HEAD_CHAIN = "head"
"""Chain of the adapted modules outside the layer stack (the classification head's linears)."""


@dataclass
class SSMLoRAConfig(AdapterConfig):
    """SSMLoRA on linear layers (defaults: the paper's RoBERTa GLUE setting, ``full_model``,
    r=8, alpha=16, dropout 0.1 on the state).

    With ``preset: full_model`` the head's linears are SSMLoRA-adapted and ``modules_to_save``
    defaults to ``[]`` (the head is trained through its adapters only, as in the paper's 1.0M
    count). Naming head modules in ``modules_to_save`` trains them fully instead, and the preset
    then leaves them un-adapted.
    """

    adapter_type: ClassVar[str] = "ssmlora"

    preset: Preset | None = "full_model"
    """Where to insert (the paper's interval/sparse insertion settings): ``full_model`` (alternating query/value, attention-output,
    FFN-in, FFN-out in every layer, head linears), ``attention_sparse`` (alternating query/value
    only), or null to use ``target_modules``. Presets know RoBERTa, BERT, DeBERTa-v2, GPT-2,
    Llama and Mistral; ``layers_to_transform`` and ``exclude_modules`` still filter them."""

    r: int = 8
    """Rank: width of ``u`` and of the state ``h``."""

    alpha: float = 16.0
    """Scale numerator (see ``scale_mode``)."""

    scale_mode: Literal["alpha_over_r", "alpha"] = "alpha_over_r"
    """``alpha_over_r``: scale = alpha/r as in LoRA; ``alpha``: scale = alpha, what the
    reference code does (paper-faithful, 8× larger at r=8)."""

    dropout: float = 0.1
    """Dropout on the normalised state ``ĥ`` before ``W_b`` (the reference's only dropout)."""

    input_dropout: float = 0.0
    """Dropout on the adapter's input ``x`` as in LoRA (0 disables it and its memory)."""

    norm: Literal["minmax", "layernorm", "none"] = "minmax"
    """Normalisation of ``h_new`` over the r axis per (example, token): min-max to [0, 1]
    (paper), layer norm without affine parameters, or none. Computed in fp32."""

    eps: float = 1e-5
    """Added to the min-max range (or the layer-norm variance); 1/eps bounds the gradient while
    the state is constant (at init). The reference's 1e-8 underflows in fp16."""

    pass_normalised_state: bool = True
    """Pass ``ĥ`` (in [0, 1] with min-max) to the next position; false passes ``h_new``."""

    detach_state: bool = True
    """Detach the passed state from autograd (paper). False backpropagates through depth along
    the chain (cheap: one r×r product per step); with activation checkpointing it needs the
    non-reentrant kind (``use_reentrant: False``), whose recomputation keeps the stored states'
    graph (the reentrant kind runs the first pass without a graph)."""

    chains: Literal["type", "reference"] | dict[str, str | list[str]] = "type"
    """How adapted modules form chains. ``type`` (the paper's): one chain per module type across
    layers (all adapted queries, all values, ...; named like ``roberta.encoder.layer.*.attention.
    self.query``) and one ``head`` chain for modules outside the layer stack. ``reference``: the
    reference repository's keys: each layer's query and value alone (``query_{i}``,
    ``value_{i}``, so they start from a zero state in every forward), one chain each for the
    attention outputs (``od``), FFN-ins (``mlp``, ``mu``), FFN-outs (``md``) and the head
    (``score``). Or a mapping chain name -> pattern (``target_modules`` rules); every adapted
    module must match exactly one pattern, and a chain's modules must run in model order on
    inputs of the same shape."""

    def __post_init__(self) -> None:
        if self.preset == "full_model" and self.modules_to_save is None:
            self.modules_to_save = []  # the head learns through its own SSMLoRA modules

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise SsmloraError(f"SSMLoRA rank r must be a positive integer, got r={self.r!r}.")
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SsmloraError(f"SSMLoRA {name} must be in [0, 1), got {getattr(self, name)}.")
        if self.eps <= 0:
            raise SsmloraError(f"SSMLoRA eps must be positive, got {self.eps}.")
        checks = {
            "preset": (self.preset, ("full_model", "attention_sparse", None)),
            "scale_mode": (self.scale_mode, ("alpha_over_r", "alpha")),
            "norm": (self.norm, ("minmax", "layernorm", "none")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise SsmloraError(f"SSMLoRA {name} must be one of {allowed}, got {value!r}.")
        if not (self.chains in ("type", "reference") or isinstance(self.chains, dict)):
            raise SsmloraError(
                "SSMLoRA chains must be 'type', 'reference' or a mapping name -> pattern, got "
                f"{self.chains!r}."
            )
        if self.preset is not None and self.target_modules is not None:
            raise SsmloraError(
                f"SSMLoRA got both preset={self.preset!r} and target_modules; set preset: null "
                "to use explicit target_modules, or drop target_modules."
            )
        if self.preset is None and self.target_modules is None:
            raise SsmloraError(
                "SSMLoRA needs a preset (full_model, attention_sparse) or target_modules."
            )

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.r) if self.scale_mode == "alpha_over_r" else self.alpha


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 when the adapter itself is fp64 (reference tests)."""
    return torch.promote_types(dtype, torch.float32)


class SSMLoRALinear(AdapterLayer):
    """A frozen ``nn.Linear``/``Conv1D`` plus SSMLoRA at one position of one state chain.

    Input ``x``: ``(..., d_in)``; output ``(..., d_out)`` in the base layer's dtype. Reads the
    state of ``(chain, position − 1)`` and writes ``(chain, position)`` in the shared
    :class:`StateChain` (a plain attribute, not a submodule: nothing of it is saved).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        config: SSMLoRAConfig,
        state_chain: StateChain,
        chain: str,
        position: int,
    ):
        super().__init__()
        self.base_layer = base_layer
        d_in, d_out = linear_dims(base_layer)
        r = config.r
        kw = {"device": base_layer.weight.device, "dtype": torch.float32}
        self.W_a = nn.Parameter(torch.empty(d_in, r, **kw))
        self.W_b = nn.Parameter(torch.empty(r, d_out, **kw))
        self.W_c = nn.Parameter(torch.empty(r, r, **kw))
        self.W_d = nn.Parameter(torch.empty(r, r, **kw))
        self.input_dropout = (
            nn.Dropout(config.input_dropout) if config.input_dropout > 0 else nn.Identity()
        )
        self.state_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling = config.scaling
        self.norm = config.norm
        self.eps = config.eps
        self.pass_normalised_state = config.pass_normalised_state
        self.detach_state = config.detach_state
        self.state_chain = state_chain
        self.chain = chain
        self.position = position
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r = self.W_a.shape[1]
        nn.init.normal_(self.W_a, mean=0.0, std=r**-0.5)
        nn.init.zeros_(self.W_b)
        nn.init.zeros_(self.W_c)
        nn.init.zeros_(self.W_d)

    def extra_repr(self) -> str:
        return f"chain={self.chain!r}, position={self.position}, r={self.W_a.shape[1]}"

    def merge(self) -> None:
        raise SsmloraError(
            "SSMLoRA cannot be merged into its base weight: its output adds scale·ĥ·W_b, where "
            "the state ĥ depends nonlinearly (min-max normalisation) on the previous modules' "
            "inputs in the chain, so it is no fixed linear map of x. Keep the adapter unmerged, "
            "or use LoRA if you need a mergeable adapter."
        )

    def unmerge(self) -> None:
        """Nothing to undo: an SSMLoRA layer is never merged."""

    def normalise(self, h: torch.Tensor) -> torch.Tensor:
        """``ĥ`` from ``h_new`` (``(..., r)``), over the r axis, in ``h``'s (fp32/fp64) dtype."""
        if self.norm == "minmax":
            low, high = torch.aminmax(h, dim=-1, keepdim=True)  # one pass for both, (..., 1)
            return (h - low) / (high - low + self.eps)
        if self.norm == "layernorm":
            return F.layer_norm(h, h.shape[-1:], eps=self.eps)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        u = thin_matmul(self.input_dropout(x.to(self.W_a.dtype)), self.W_a)  # (..., r)
        h_prev = self.state_chain.read(self.chain, self.position, like=u)
        dtype = _compute_dtype(self.W_c.dtype)
        with torch.autocast(device_type=u.device.type, enabled=False):
            u_full = u.to(dtype)
            # The first module of a chain starts from h = 0 (the paper's initial state). Computing with the zero
            # state keeps W_c in the graph (its gradient is 0), so DDP finds no unused parameter.
            h_prev = torch.zeros_like(u_full) if h_prev is None else h_prev.to(dtype)
            h_new = u_full @ self.W_d.to(dtype) + h_prev + h_prev @ self.W_c.to(dtype)  # (..., r)
            h_hat = self.normalise(h_new)
        passed = h_hat if self.pass_normalised_state else h_new
        self.state_chain.write(
            self.chain, self.position, passed.detach() if self.detach_state else passed
        )
        # The scale and the sum run in place on fresh (..., d_out) buffers, as in LoRA: neither a
        # product's nor a linear's backward needs its output, so no temporary of the layer's
        # output size is allocated beyond the two products themselves.
        update = (u + self.state_dropout(h_hat).to(u.dtype)) @ self.W_b  # (..., d_out)
        return result.add_(update.mul_(self.scaling).to(result.dtype))


def _layered_type(name: str, layers_pattern: str | None) -> str | None:
    """``roberta.encoder.layer.3.attention.self.query`` -> ``roberta.encoder.layer.*.attention.
    self.query``; None for a name outside the layer stack."""
    container = r"[^.]*" if layers_pattern is None else re.escape(layers_pattern)
    match = re.match(rf"((?:.*\.)?{container}\.)\d+(\..+)$", name)
    return f"{match.group(1)}*{match.group(2)}" if match else None


def _chain_of(name: str, config: SSMLoRAConfig) -> str:
    """The chain of ``name`` under ``chains: type`` or a mapping of patterns."""
    if config.chains == "type":
        return _layered_type(name, config.layers_pattern) or HEAD_CHAIN
    hits = [c for c, pattern in config.chains.items() if name_matches(name, pattern)]
    if len(hits) != 1:
        raise SsmloraError(
            f"SSMLoRA module {name} matches {len(hits)} chains ({hits}) of "
            f"chains={config.chains!r}; each adapted module must match exactly one."
        )
    return hits[0]


def assign_chains(
    names: list[str], config: SSMLoRAConfig, model: nn.Module | None = None
) -> dict[str, tuple[str, int]]:
    """Module name -> ``(chain, position)``; positions follow the order of ``names``
    (``chains: reference`` reads the architecture of ``model``)."""
    if config.chains == "reference":
        if model is None:
            raise SsmloraError("SSMLoRA chains: reference needs the model's architecture.")
        chain_of = reference_chains(model, names)
    else:
        chain_of = {name: _chain_of(name, config) for name in names}
    counts: dict[str, int] = {}
    assigned = {}
    for name in names:
        chain = chain_of[name]
        assigned[name] = (chain, counts.get(chain, 0))
        counts[chain] = counts.get(chain, 0) + 1
    return assigned


def inject_ssmlora(model: nn.Module, config: SSMLoRAConfig, skip: Sequence[str]) -> list[str]:
    """Wrap the target layers of ``model`` in :class:`SSMLoRALinear`; returns the wrapped names.

    Registers the reset of one shared :class:`StateChain` as a forward pre-hook on ``model``.
    """
    if config.preset is not None:
        names = filter_targets(
            model,
            preset_modules(model, config.preset),
            skip=skip,
            layers_to_transform=config.layers_to_transform,
            layers_pattern=config.layers_pattern,
            exclude_modules=config.exclude_modules,
            what=f"SSMLoRA preset {config.preset!r}",
        )
    else:
        names = find_config_targets(model, config, skip)
    state_chain = StateChain()
    for name, (chain, position) in assign_chains(names, config, model).items():
        base = model.get_submodule(name)
        layer = SSMLoRALinear(base, config, state_chain, chain, position)
        replace_module(model, name, layer.train(base.training))  # keep the model's mode
    model.register_forward_pre_hook(state_chain.reset)
    return names


def _diagnostics(model: nn.Module) -> Diagnostics:
    from ssmlora_app.adapters.ssmlora_stats import ssmlora_diagnostics

    return Diagnostics(scalars=ssmlora_diagnostics(model))


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    """SSMLoRA at both of the paper's insertion presets."""
    presets: tuple[Preset, ...] = ("attention_sparse", "full_model")
    return {f"ssmlora_{p}": SSMLoRAConfig(preset=p, **dict(settings.options)) for p in presets}


register_adapter(
    AdapterMethod(SSMLoRAConfig, inject_ssmlora, diagnostics=_diagnostics, bench=_bench)
)
