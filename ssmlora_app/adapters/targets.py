"""Target matching shared by every adapter (``peft`` semantics), and in-place module replacement."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.errors import SsmloraError

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)
"""Layer types a low-rank adapter can wrap: ``nn.Linear`` and HF GPT-2's ``Conv1D``."""


def name_matches(name: str, pattern: str | Sequence[str]) -> bool:
    """``peft``'s rule: a string is a full regex match; a list matches exact names or suffixes."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def layer_index(name: str, layers_pattern: str | None) -> int | None:
    """The layer index in a dotted name (``roberta.encoder.layer.3.attention...`` -> 3)."""
    container = r"[^.]*" if layers_pattern is None else re.escape(layers_pattern)
    match = re.match(rf"(?:.*\.)?{container}\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def linear_dims(layer: nn.Module) -> tuple[int, int]:
    """``(d_in, d_out)`` of an ``nn.Linear`` (weight ``(out, in)``) or a ``Conv1D`` (``(in, out)``)."""
    if isinstance(layer, Conv1D):
        d_in, d_out = layer.weight.shape
        return d_in, d_out
    return layer.in_features, layer.out_features


WEIGHT_READERS = ("MambaMixer", "Mamba2Mixer")
"""Modules that read their linears' ``.weight`` directly instead of calling them (HF Mamba's
mixers pass ``in_proj.weight``, ``x_proj.weight``, ``out_proj.weight`` to fused kernels): a
wrapper around such a linear would be bypassed, so adapters re-parametrise its weight."""


def reads_weight_directly(model: nn.Module, name: str) -> bool:
    """Whether the module owning ``name`` reads ``name``'s weight without calling it."""
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return type(parent).__name__.removeprefix("Parametrized") in WEIGHT_READERS


def under(name: str, prefixes: Sequence[str]) -> bool:
    """``name`` is one of ``prefixes`` or inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def find_targets(
    model: nn.Module,
    target_modules: str | Sequence[str],
    *,
    layers_to_transform: Sequence[int] | None = None,
    layers_pattern: str | None = None,
    exclude_modules: str | Sequence[str] | None = None,
    skip: Sequence[str] = (),
    types: tuple[type[nn.Module], ...] = LINEAR_TYPES,
) -> list[str]:
    """Dotted names of the modules of ``types`` that the rules select, in model order.

    ``skip`` lists module names (and their children) that are never targets, e.g. the fully
    trained head. Raises :class:`SsmloraError` listing the candidate layers if nothing matches.
    """
    candidates = [
        name
        for name, module in model.named_modules()
        if isinstance(module, types) and name and not under(name, skip)
    ]
    selected = []
    for name in candidates:
        if not name_matches(name, target_modules):
            continue
        if exclude_modules is not None and name_matches(name, exclude_modules):
            continue
        if layers_to_transform is not None:
            index = layer_index(name, layers_pattern)
            if index is None or index not in layers_to_transform:
                continue
        selected.append(name)
    if not selected:
        raise SsmloraError(
            f"target_modules={target_modules!r} (layers_to_transform={layers_to_transform}, "
            f"exclude_modules={exclude_modules!r}) matches no layer of {type(model).__name__}. "
            f"Layers it could match (by suffix): {describe_candidates(candidates)}"
        )
    return selected


def find_config_targets(
    model: nn.Module,
    config: AdapterConfig,
    skip: Sequence[str],
    target_modules: str | Sequence[str] | None = None,
    types: tuple[type[nn.Module], ...] = LINEAR_TYPES,
) -> list[str]:
    """:func:`find_targets` with an adapter config's matching rules (``target_modules``, its
    ``layers_to_transform``/``layers_pattern``/``exclude_modules``); ``target_modules`` overrides
    the config's (an adapter's default pattern or preset)."""
    return find_targets(
        model,
        config.target_modules if target_modules is None else target_modules,
        layers_to_transform=config.layers_to_transform,
        layers_pattern=config.layers_pattern,
        exclude_modules=config.exclude_modules,
        skip=skip,
        types=types,
    )


def describe_candidates(names: Sequence[str], limit: int = 40) -> str:
    """Compact list of layer names: unique suffixes after the layer index, then full names."""
    suffixes: dict[str, None] = {}
    for name in names:
        match = re.match(r"(?:.*\.)?\d+\.(.+)$", name)
        suffixes[match.group(1) if match else name] = None
    listed = list(suffixes)
    more = f" ... and {len(listed) - limit} more" if len(listed) > limit else ""
    return ", ".join(listed[:limit]) + more


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the dotted ``name`` is in ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
