"""Injecting an adapter into a model, and what counts as "the adapter" afterwards."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.registry import get_spec
from ssmlora_app.errors import SsmloraError

HEAD_NAMES = ("pooler", "classifier", "score")
"""Top-level task-head modules of HF ``*ForSequenceClassification`` models (DeBERTa-v2 has a
freshly initialised ``pooler``; BERT's pretrained pooler sits under ``bert.`` and is not one)."""

CONFIG_ATTR = "ssmlora_config"
"""Attribute of an injected model holding its resolved :class:`AdapterConfig`."""


def default_head(model: nn.Module) -> list[str]:
    """Names of ``model``'s top-level task-head modules."""
    return [name for name, _ in model.named_children() if name in HEAD_NAMES]


def inject_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze ``model``, wrap the layers ``config`` selects, unfreeze the head; in place.

    Adapter parameters are fp32 whatever the backbone dtype. Returns ``model``.
    """
    if hasattr(model, CONFIG_ATTR):
        raise SsmloraError("This model already has an adapter; inject into a fresh backbone.")
    spec = get_spec(config.adapter_type)
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
    spec.inject(model, config, heads)
    for name in heads:
        model.get_submodule(name).requires_grad_(True)
    setattr(model, CONFIG_ATTR, dataclasses.replace(config, modules_to_save=heads))
    return model


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The resolved config of an injected model."""
    try:
        return getattr(model, CONFIG_ATTR)
    except AttributeError:
        raise SsmloraError("This model has no adapter: call inject_adapters first.") from None


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (every adapter layer's own parameters and buffers, not its
    ``base_layer``) and the task head, keyed by their names in ``model``.

    The head is the fully trained ``modules_to_save`` and the model's freshly initialised
    top-level head (:func:`default_head`) whole, frozen parts included: when an adapter wraps the
    head's linears (SSMLoRA's ``full_model``), their base weights are a random draw that no
    pretrained checkpoint holds, so a reload without them would give other logits."""
    heads = list(
        dict.fromkeys([*(adapter_config(model).modules_to_save or []), *default_head(model)])
    )
    layers = [name for name, m in model.named_modules() if isinstance(m, AdapterLayer)]
    state = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        in_layer = any(
            key.startswith(f"{layer}.") and not key.startswith(f"{layer}.base_layer.")
            for layer in layers
        )
        if in_layer or any(key.startswith(f"{head}.") for head in heads):
            state[key] = tensor.detach()
    return state


def count_trainable_parameters(model: nn.Module, include_head: bool = True) -> int:
    """Number of trainable parameter elements (optionally without the fully trained head)."""
    heads = [] if include_head else (getattr(model, CONFIG_ATTR).modules_to_save or [])
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not any(name.startswith(h + ".") for h in heads)
    )


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def merge_adapters(model: nn.Module) -> None:
    """Fold every adapter into its base weight (raises for adapters that cannot be merged)."""
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            module.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """Undo :func:`merge_adapters`."""
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            module.unmerge()
