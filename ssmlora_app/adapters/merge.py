"""Folding an adapter into its backbone's weights, for methods that declare it possible.

Two mechanisms carry adapters (see :class:`~ssmlora_app.adapters.base.AdapterLayer`): a wrapper
around a base layer (LoRA on most linears) and a weight re-parametrisation
(``torch.nn.utils.parametrize``: LoRA on Mamba's projections, SDT's sparse deltas). Merging
folds the update into the frozen tensor in both; *unloading* then removes the adapter modules,
leaving a plain Hugging Face model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ssmlora_app.adapters.base import AdapterLayer
from ssmlora_app.adapters.inject import INNER_ATTR, TRAINED_ATTR
from ssmlora_app.adapters.registry import CONFIG_ATTR, adapter_config, method_of
from ssmlora_app.adapters.targets import replace_module
from ssmlora_app.errors import SsmloraError


def merge_adapters(model: nn.Module) -> None:
    """Fold every adapter layer into its base weight, reversibly (:func:`unmerge_adapters`)."""
    _check_mergeable(model)
    if method_of(model).merge is not None:
        raise SsmloraError(
            f"{method_of(model).name} adapters merge only for good (merge_and_unload), not "
            "reversibly in place."
        )
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            module.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """Undo :func:`merge_adapters`."""
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            module.unmerge()


def _check_mergeable(model: nn.Module) -> None:
    method = method_of(model)
    if not method.can_merge(adapter_config(model)):
        raise SsmloraError(
            f"{method.name} adapters cannot be merged into the backbone's weights (the method "
            "is not mergeable: its update is no fixed change of a weight). Keep the adapter "
            "model, or train a mergeable adapter such as LoRA."
        )


def _parametrized(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(owner, tensor name)`` of every tensor re-parametrised by an adapter layer."""
    found = []
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for name, chain in module.parametrizations.items():
            if any(isinstance(p, AdapterLayer) for p in chain):
                found.append((module, name))
    return found


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the adapter into the backbone and remove every adapter module, in place: the result
    is the plain backbone with updated weights (and its head). Raises :class:`SsmloraError` for a
    method that is not ``mergeable``. Returns the plain model: ``model`` itself, or the backbone
    inside a whole-model wrapper (``AdapterMethod.merge``); use the result."""
    _check_mergeable(model)
    method = method_of(model)
    if method.merge is not None:
        plain = method.merge(model)
        for attr in (CONFIG_ATTR, TRAINED_ATTR, INNER_ATTR):
            if hasattr(plain, attr):
                delattr(plain, attr)
        return plain
    for owner, name in _parametrized(model):
        parametrize.remove_parametrizations(owner, name, leave_parametrized=True)
    for name, module in list(model.named_modules()):
        if isinstance(module, AdapterLayer):
            module.merge()
            replace_module(model, name, module.base_layer)
    delattr(model, CONFIG_ATTR)
    if hasattr(model, TRAINED_ATTR):
        delattr(model, TRAINED_ATTR)
    return model
