"""Adapter name -> :class:`~ssmlora_app.adapters.method.AdapterMethod`.

Each method file registers its method when it is imported (``register_adapter(...)`` at its end);
``ssmlora_app/adapters/__init__.py`` imports the built-in ones, one line each. The registry is
filled at import time only: after that it is read (``ADAPTERS``, :func:`get_method`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from types import MappingProxyType

from torch import Tensor, nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.method import AdapterMethod, Diagnostics
from ssmlora_app.errors import SsmloraError

_METHODS: dict[str, AdapterMethod] = {}

ADAPTERS: Mapping[str, AdapterMethod] = MappingProxyType(_METHODS)
"""Every registered method by name (a read-only view)."""

DEFAULT_ADAPTER = "lora"
"""The method used when a run names no adapter (``model.adapter: null``, no saved one)."""

CONFIG_ATTR = "ssmlora_config"
"""Attribute of an injected model holding its resolved :class:`AdapterConfig`."""


def register_adapter(method: AdapterMethod) -> AdapterMethod:
    """Make ``method`` known by its config's ``adapter_type``; returns it. Registering the same
    method again (a module imported twice) is a no-op; another method under a taken name is an
    error."""
    name = method.config_cls.adapter_type
    if not name:
        raise ValueError(f"{method.config_cls.__name__} has no adapter_type.")
    known = _METHODS.get(name)
    if known is not None and known.config_cls is not method.config_cls:
        raise ValueError(
            f"Adapter name {name!r} is taken by {known.class_path}; choose another adapter_type "
            f"for {method.class_path}."
        )
    _METHODS[name] = method
    return method


def get_method(name: str) -> AdapterMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise SsmloraError(
            f"Unknown adapter {name!r}; known adapters: {sorted(_METHODS)}."
        ) from None


def default_adapter_config() -> AdapterConfig:
    """The default config of :data:`DEFAULT_ADAPTER` (LoRA r=8, alpha=16 on query/value)."""
    return get_method(DEFAULT_ADAPTER).config_cls()


def method_of(model: nn.Module) -> AdapterMethod:
    """The method of an injected model."""
    return get_method(adapter_config(model).adapter_type)


def adapter_config(model: nn.Module) -> AdapterConfig:
    """The resolved config of an injected model."""
    try:
        return getattr(model, CONFIG_ATTR)
    except AttributeError:
        raise SsmloraError("This model has no adapter: call inject_adapters first.") from None


def has_adapter(model: nn.Module) -> bool:
    return hasattr(model, CONFIG_ATTR)


def generation_context(model: nn.Module) -> AbstractContextManager:
    """The context for one KV-cached ``generate`` call on ``model`` (the method's ``generation``
    hook, e.g. HRM's carried SSM state); a no-op context for methods without one."""
    method = method_of(model) if has_adapter(model) else None
    if method is None or method.generation is None:
        return nullcontext()
    return method.generation(model)


def adapter_diagnostics(model: nn.Module) -> Diagnostics | None:
    """The method's diagnostics of ``model`` now; None for a method without the hook."""
    method = method_of(model) if has_adapter(model) else None
    if method is None or method.diagnostics is None:
        return None
    return method.diagnostics(model)


def lm_training_loss(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """The causal-LM training loss of ``model`` on one batch: the method's ``lm_loss`` hook (e.g.
    HRM's chunked truncated BPTT) or one forward."""
    method = method_of(model) if has_adapter(model) else None
    if method is None or method.lm_loss is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    return method.lm_loss(model, input_ids, attention_mask, labels)
