"""Injecting an adapter into a model, and what counts as "the adapter" afterwards."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.registry import CONFIG_ATTR, adapter_config, get_method, has_adapter
from ssmlora_app.errors import SsmloraError

HEAD_NAMES = ("pooler", "classifier", "score", "qa_outputs")
"""Top-level task-head modules of HF ``*ForSequenceClassification`` and ``*ForMultipleChoice``
models (DeBERTa-v2 has a freshly initialised ``pooler``; BERT's pretrained pooler sits under
``bert.`` and is not one) and the span head of ``*ForQuestionAnswering`` (``qa_outputs``)."""

TRAINED_ATTR = "ssmlora_trained_parameters"
"""Attribute of an injected model: backbone parameters (outside adapter layers and the head) that
the method left trainable (a parameter-subset method such as BitFit); saved with the adapter."""

INNER_ATTR = "ssmlora_inner_model"
"""Attribute of a whole-model wrapper (``AdapterMethod.wrap_model``): the name of the wrapped
backbone inside it (``peft_model.base_model.model``), so the head's names can be found there."""


def default_head(model: nn.Module) -> list[str]:
    """Names of ``model``'s top-level task-head modules."""
    return [name for name, _ in model.named_children() if name in HEAD_NAMES]


def inject_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze ``model``, let the config's method adapt it, unfreeze the head; in place.

    Adapter parameters are fp32 whatever the backbone dtype. Returns the adapted model: ``model``
    itself, or the wrapper of a whole-model method (``AdapterMethod.wrap_model``); use the result.
    """
    if has_adapter(model):
        raise SsmloraError("This model already has an adapter; inject into a fresh backbone.")
    method = get_method(config.adapter_type)
    config.validate()
    heads = default_head(model) if config.modules_to_save is None else list(config.modules_to_save)
    for name in heads:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise SsmloraError(
                f"modules_to_save names {name!r}, which {type(model).__name__} does not have."
            ) from None
    model.requires_grad_(False)
    method.inject(model, config, heads)
    layers = _adapter_layer_names(model)
    trained = tuple(
        name
        for name, p in model.named_parameters()
        if p.requires_grad and not _in_layer(name, layers) and not _under(name, heads)
    )
    for name in heads:
        model.get_submodule(name).requires_grad_(True)
    setattr(model, CONFIG_ATTR, dataclasses.replace(config, modules_to_save=heads))
    setattr(model, TRAINED_ATTR, trained)
    if method.wrap_model is not None:
        wrapped = method.wrap_model(model, config)
        setattr(wrapped, CONFIG_ATTR, getattr(model, CONFIG_ATTR))
        setattr(wrapped, TRAINED_ATTR, trained)
        inner = next((n for n, m in wrapped.named_modules() if m is model), None)
        if inner is None:
            raise SsmloraError(f"{method.name}: the wrapped model does not contain the backbone.")
        setattr(wrapped, INNER_ATTR, inner)
        return wrapped
    return model


def inner_model(model: nn.Module) -> nn.Module:
    """The backbone inside a whole-model wrapper (``model`` itself when it is not one)."""
    inner = getattr(model, INNER_ATTR, "")
    return model.get_submodule(inner) if inner else model


def _head_prefixes(model: nn.Module, heads: list[str]) -> list[str]:
    """``heads`` (names in the backbone) as names in ``model`` (a wrapper prefixes them)."""
    inner = getattr(model, INNER_ATTR, "")
    return [f"{inner}.{h}" if inner else h for h in heads]


def _adapter_layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, AdapterLayer)]


def _in_layer(key: str, layers: list[str]) -> bool:
    """``key`` belongs to an adapter layer itself (not to the base layer it wraps)."""
    return any(
        key.startswith(f"{layer}.") and not key.startswith(f"{layer}.base_layer.")
        for layer in layers
    )


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(f"{p}.") for p in prefixes)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors, keyed by their names in ``model``: every adapter layer's own
    parameters and buffers (not its ``base_layer``), the backbone parameters the method trains
    (:data:`TRAINED_ATTR`) and the task head.

    The head is the fully trained ``modules_to_save`` and the model's freshly initialised
    top-level head (:func:`default_head`) whole, frozen parts included: when an adapter wraps the
    head's linears (SSMLoRA's ``full_model``), their base weights are a random draw that no
    pretrained checkpoint holds, so a reload without them would give other logits. A wrapper with
    its own layout (``AdapterMethod.state``) names its tensors itself."""
    state = get_method(adapter_config(model).adapter_type).state
    if state is not None:
        return state.tensors(model)
    backbone = inner_model(model)
    heads = list(
        dict.fromkeys([*(adapter_config(model).modules_to_save or []), *default_head(backbone)])
    )
    heads = _head_prefixes(model, heads)
    trained = set(_head_prefixes(model, list(getattr(model, TRAINED_ATTR, ()))))
    layers = _adapter_layer_names(model)
    return {
        key: tensor.detach()
        for key, tensor in model.state_dict(keep_vars=True).items()
        if key in trained or _in_layer(key, layers) or _under(key, heads)
    }


def count_trainable_parameters(model: nn.Module, include_head: bool = True) -> int:
    """Number of trainable parameter elements (optionally without the fully trained head)."""
    heads = [] if include_head else (adapter_config(model).modules_to_save or [])
    heads = _head_prefixes(model, heads)
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not _under(name, heads)
    )


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, trainable or not (a 4-bit weight counted by its shape,
    not by the bytes that pack two of its elements each)."""
    return sum(_numel(p) for p in model.parameters())


def _numel(p: Tensor) -> int:
    state = getattr(p, "quant_state", None)  # bitsandbytes' Params4bit: the unpacked shape
    return math.prod(state.shape) if state is not None else p.numel()
