"""What every adapter shares: its config base class and the marker class of its layers.

An adapter method is three pieces (as in ``peft``): a dataclass config, a layer that wraps a base
layer and owns only its new parameters, and an injector. This file holds the shared parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass
class AdapterConfig:
    """Which modules an adapter is injected into, and which are trained fully.

    Matching follows ``peft``: see :func:`ssmlora_app.adapters.targets.find_targets`.
    """

    adapter_type: ClassVar[str] = ""

    target_modules: str | list[str] | None = None
    """Modules to adapt: a string is a regex matched against the full dotted module name; a list
    matches exact names or name suffixes (``query`` matches ``...attention.self.query``)."""

    layers_to_transform: list[int] | None = None
    """Only adapt modules in these layer indices (None: every layer)."""

    layers_pattern: str | None = None
    """Name of the layer container (``layer``, ``layers``, ``h``) used to read a module's layer
    index for ``layers_to_transform``; None finds the first ``.<name>.<index>.`` in the name."""

    exclude_modules: str | list[str] | None = None
    """Modules never to adapt, with the same matching rules as ``target_modules``."""

    modules_to_save: list[str] | None = None
    """Modules trained fully and saved with the adapter (the task head). None: the model's
    top-level ``pooler``/``classifier``/``score`` modules, if any; [] for none."""

    def validate(self) -> None:
        """Raise :class:`~ssmlora_app.errors.SsmloraError` for invalid values (called by
        ``inject_adapters``, so the CLI reports it before any training)."""


class AdapterLayer(nn.Module):
    """Marker base class of adapter layers that wrap a frozen ``base_layer``.

    Everything a subclass registers besides ``base_layer`` belongs to the adapter and is what
    :func:`ssmlora_app.adapters.io.save_adapter` writes. A layer may instead be a weight
    parametrization (``torch.nn.utils.parametrize``, used by SDT): it has no ``base_layer`` and
    the frozen tensor stays outside it, at ``<module>.parametrizations.<name>.original``.
    """

    base_layer: nn.Module

    resizable: ClassVar[tuple[str, ...]] = ()
    """Names of this layer's tensors whose shape comes from the saved state (a warm-up buffer that
    exists only in one phase): loaders accept any saved shape for them and the layer's
    ``_load_from_state_dict`` resizes them."""

    def merge(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into its base layer.")

    def unmerge(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be unmerged.")


def shape_mismatches(
    model: nn.Module, saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> list[str]:
    """Keys of ``saved`` whose shape differs from ``expected`` (both keyed by names in
    ``model``), leaving out the :attr:`AdapterLayer.resizable` tensors."""
    resizable = {
        f"{name}.{tensor}"
        for name, module in model.named_modules()
        if isinstance(module, AdapterLayer)
        for tensor in module.resizable
    }
    return [
        key
        for key in expected.keys() & saved.keys()
        if key not in resizable and expected[key].shape != saved[key].shape
    ]
