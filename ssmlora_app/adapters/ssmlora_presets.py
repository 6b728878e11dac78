"""SSMLoRA insertion presets (the SSMLoRA paper's Tables 1, 2 and 6-8) and their LoRA baselines, per architecture.

- ``attention_sparse`` (paper Tables 6–8): query at even layers, value at odd layers, key never
  (GPT-2's fused ``c_attn`` at even layers).
- ``full_model`` (paper Tables 1, 2): the same, plus attention-output, FFN-in (Llama/Mistral:
  ``gate_proj`` and ``up_proj``), FFN-out in every layer, and the classification head's linears.

The LoRA baselines the paper compares with: ``attention_sparse`` -> LoRA on query and value in
every layer (``c_attn`` for GPT-2); ``full_model`` -> LoRA on q, k, v, o, FFN-in, FFN-out in every
layer plus the head's linears.

Chains (:func:`reference_chains`): the paper chains modules of one type across layers; the
reference repository (yuhkalhic/SSMLoRA ``src/models/model_utils.py``) keys the alternating
queries and values per layer (``query_{i}``, ``value_{i}``: each its own chain) and shares one
key across layers for the attention output (``od``), FFN-in (``mlp``, and ``mu`` for Llama's
up projection), FFN-out (``md``) and the head (``score``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from ssmlora_app.adapters.lora import LoRAConfig
from ssmlora_app.adapters.targets import LINEAR_TYPES, describe_candidates, name_matches
from ssmlora_app.errors import SsmloraError

Preset = Literal["full_model", "attention_sparse"]


@dataclass(frozen=True)
class ArchitectureNames:
    """Where an architecture's linears are: names relative to ``<layers>.<index>.``."""

    layers: str
    """Name of the layer container (``layer``, ``h``, ``layers``)."""
    query: str
    key: str
    value: str
    """Attention projections; ``query == key == value`` for a fused projection (GPT-2)."""
    attn_out: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    heads: tuple[str, ...]
    """Top-level task-head modules whose linears ``full_model`` adapts (the classifier, or the
    span head ``qa_outputs`` of extractive QA)."""

    @property
    def fused_qkv(self) -> bool:
        return self.query == self.value


_BERT_LIKE = ArchitectureNames(
    layers="layer",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attn_out="attention.output.dense",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
    heads=("classifier", "qa_outputs"),
)
_LLAMA_LIKE = ArchitectureNames(
    layers="layers",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    attn_out="self_attn.o_proj",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out="mlp.down_proj",
    heads=("score",),
)

ARCHITECTURES: dict[str, ArchitectureNames] = {
    "roberta": _BERT_LIKE,
    "bert": _BERT_LIKE,
    "deberta-v2": ArchitectureNames(
        layers="layer",
        query="attention.self.query_proj",
        key="attention.self.key_proj",
        value="attention.self.value_proj",
        attn_out="attention.output.dense",
        ffn_in=("intermediate.dense",),
        ffn_out="output.dense",
        heads=("pooler", "classifier", "qa_outputs"),
    ),
    "gpt2": ArchitectureNames(
        layers="h",
        query="attn.c_attn",
        key="attn.c_attn",
        value="attn.c_attn",
        attn_out="attn.c_proj",
        ffn_in=("mlp.c_fc",),
        ffn_out="mlp.c_proj",
        heads=("score",),
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
}
"""Known ``config.model_type`` -> where its linears are."""


def architecture(model: nn.Module) -> ArchitectureNames:
    """The :class:`ArchitectureNames` of a Hugging Face model, from ``model.config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise SsmloraError(
            f"SSMLoRA presets know {sorted(ARCHITECTURES)}, not model_type={model_type!r} "
            f"({type(model).__name__}). Set preset: null and list target_modules explicitly."
        ) from None


def _linears(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and isinstance(m, LINEAR_TYPES)]


def _split(name: str, layers: str) -> tuple[int, str] | None:
    """``(index, suffix)`` of ``...<layers>.<index>.<suffix>``; None outside the layer stack."""
    match = re.match(rf"(?:.*\.)?{re.escape(layers)}\.(\d+)\.(.+)$", name)
    return (int(match.group(1)), match.group(2)) if match else None


def _select(model: nn.Module, keep) -> list[str]:
    """Linears of ``model`` (model order) for which ``keep(index, suffix, name)`` is true;
    ``index``/``suffix`` are None for modules outside the layer stack."""
    arch = architecture(model)
    selected = []
    for name in _linears(model):
        split = _split(name, arch.layers)
        index, suffix = split if split is not None else (None, None)
        if keep(arch, index, suffix, name):
            selected.append(name)
    return selected


def _in_head(arch: ArchitectureNames, name: str) -> bool:
    return name.split(".", 1)[0] in arch.heads


def _alternating_qv(arch: ArchitectureNames, index: int, suffix: str) -> bool:
    if arch.fused_qkv:
        return suffix == arch.query and index % 2 == 0
    return (suffix == arch.query and index % 2 == 0) or (suffix == arch.value and index % 2 == 1)


def preset_modules(model: nn.Module, preset: Preset) -> list[str]:
    """Names of the linears SSMLoRA's ``preset`` adapts in ``model``, in model order."""

    def keep(arch: ArchitectureNames, index, suffix, name) -> bool:
        if index is None:
            return preset == "full_model" and _in_head(arch, name)
        if _alternating_qv(arch, index, suffix):
            return True
        return preset == "full_model" and suffix in (arch.attn_out, *arch.ffn_in, arch.ffn_out)

    return _select(model, keep)


def lora_baseline_modules(model: nn.Module, preset: Preset) -> list[str]:
    """Names of the linears of the paper's LoRA baseline for ``preset``, in model order."""

    def keep(arch: ArchitectureNames, index, suffix, name) -> bool:
        if index is None:
            return preset == "full_model" and _in_head(arch, name)
        attention = {arch.query, arch.value}
        if preset == "full_model":
            attention |= {arch.key, arch.attn_out, *arch.ffn_in, arch.ffn_out}
        return suffix in attention

    return _select(model, keep)


def lora_baseline_config(
    model: nn.Module, preset: Preset, r: int = 8, alpha: float = 16.0
) -> LoRAConfig:
    """The :class:`LoRAConfig` the paper compares ``preset`` with. For ``full_model`` the head's
    linears get LoRA and the head is not trained fully (``modules_to_save=[]``), as for SSMLoRA."""
    names = lora_baseline_modules(model, preset)
    return LoRAConfig(
        r=r,
        alpha=alpha,
        target_modules=names,
        modules_to_save=[] if preset == "full_model" else None,
    )


def filter_targets(
    model: nn.Module,
    names: Sequence[str],
    *,
    skip: Sequence[str],
    layers_to_transform: Sequence[int] | None,
    layers_pattern: str | None,
    exclude_modules: str | Sequence[str] | None,
    what: str,
) -> list[str]:
    """``names`` without those under ``skip``, outside ``layers_to_transform`` or excluded;
    raises :class:`SsmloraError` when nothing is left."""
    arch = architecture(model)
    kept = []
    for name in names:
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if exclude_modules is not None and name_matches(name, exclude_modules):
            continue
        if layers_to_transform is not None:
            split = _split(name, layers_pattern or arch.layers)
            if split is None or split[0] not in layers_to_transform:
                continue
        kept.append(name)
    if not kept:
        raise SsmloraError(
            f"{what} selects no layer of {type(model).__name__} after skip={list(skip)}, "
            f"layers_to_transform={layers_to_transform}, exclude_modules={exclude_modules!r}. "
            f"Linears of the model: {describe_candidates(_linears(model))}"
        )
    return kept


def reference_chains(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Module name -> chain, keyed as the SSMLoRA reference repository keys its state
    (``src/models/model_utils.py``): ``query_{i}`` / ``value_{i}`` per layer ``i``, ``od``
    (attention output), ``mlp`` / ``mu`` (FFN-in: gate and up projections), ``md`` (FFN-out) and
    ``score`` (the head's linears). Raises :class:`SsmloraError` for a module it has no key for."""
    arch = architecture(model)
    shared = {arch.attn_out: "od", arch.ffn_out: "md"}
    shared.update(dict(zip(arch.ffn_in, ("mlp", "mu"), strict=False)))
    chains = {}
    for name in names:
        split = _split(name, arch.layers)
        if split is None:
            if not _in_head(arch, name):
                raise SsmloraError(f"SSMLoRA chains: reference has no key for {name}.")
            chains[name] = "score"
            continue
        index, suffix = split
        if suffix == arch.query:  # GPT-2's fused c_attn too
            chains[name] = f"query_{index}"
        elif suffix == arch.value:
            chains[name] = f"value_{index}"
        elif suffix in shared:
            chains[name] = shared[suffix]
        else:
            raise SsmloraError(
                f"SSMLoRA chains: reference keys queries, values, attention output, FFN-in, "
                f"FFN-out and the head; {name} is none of them."
            )
    return chains
