"""FSDP wrapping for adapters: no FSDP unit mixes frozen and trainable parameters, and no adapter
layer reads a parameter that another unit holds.

A unit that mixes them keeps gradient buffers for its whole flat parameter, as if nothing were
frozen. The policy makes a unit of

* every adapter layer (:class:`~ssmlora_app.adapters.base.AdapterLayer`) with all its trainable
  parts: LoRA's ``lora_A``/``lora_B``, SSMLoRA's ``W_a..W_d``, HRM's system. An adapter layer
  reads its parts' weights directly (LoRA's one-GEMM update reads ``lora_B.weight``), so they
  must be gathered with the layer's own forward, not by a forward of theirs that never runs;
* every adapter's ``base_layer`` (frozen, whatever it is: a linear, BERT's output block with its
  norm) and every other frozen linear or embedding;
* every other module that directly owns a trainable parameter (the head's linears);
* every transformer block; what is left in a block's unit (its norms) is frozen.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.distributed.fsdp.wrap import _Policy
from transformers.pytorch_utils import Conv1D

from ssmlora_app.adapters.base import AdapterLayer

BLOCK_SUFFIXES = ("Layer", "DecoderLayer", "Block")
"""Class-name endings of transformer blocks (RobertaLayer, LlamaDecoderLayer, GPT2Block,
MambaBlock)."""


def wrapped_modules(root: nn.Module) -> list[str]:
    """Names (in ``root.named_modules()``) of the modules that become FSDP units, the root
    excluded (it is always one)."""
    names: list[str] = []
    parts: set[str] = set()  # inside an adapter layer, its base layer excepted: never a unit
    for name, module in root.named_modules():  # parents before children
        if name in parts:
            parts.update(f"{name}.{child}" for child, _ in module.named_children())
            continue
        if not name or name in names:  # the root; a base layer named with its adapter layer
            continue
        if isinstance(module, AdapterLayer):
            names.append(name)
            parts.update(
                f"{name}.{child}" for child, _ in module.named_children() if child != "base_layer"
            )
            base = getattr(module, "base_layer", None)
            if base is not None and any(True for _ in base.parameters()):
                names.append(f"{name}.base_layer")  # frozen, norms included (BERT's output)
        elif _is_unit(module):
            names.append(name)
    return names


def _is_unit(module: nn.Module) -> bool:
    """Outside adapter layers: a module owning a trainable parameter (a head), a frozen linear
    or embedding, or a transformer block."""
    params = list(module.parameters(recurse=False))
    if any(p.requires_grad for p in params):
        return True
    if params and isinstance(module, nn.Linear | nn.Embedding | Conv1D):
        return True
    return type(module).__name__.endswith(BLOCK_SUFFIXES)


class AdapterWrapPolicy(_Policy):
    """``auto_wrap_policy`` for ``FSDPStrategy``: the units of :func:`wrapped_modules`.

    FSDP runs a policy object on the whole model at once, which this one needs (whether a
    linear is a unit depends on its parent). It is also callable, as the strategy's type hint
    asks, but only FSDP's object protocol is supported.
    """

    def _run_policy(
        self,
        root_module: nn.Module,
        ignored_modules: set[nn.Module],
        root_kwargs: dict[str, Any],
    ) -> dict[nn.Module, dict[str, Any]]:
        modules = dict(root_module.named_modules())
        targets = {root_module: dict(root_kwargs)}
        for name in wrapped_modules(root_module):
            if modules[name] not in ignored_modules:
                targets[modules[name]] = dict(root_kwargs)
        return targets

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        raise TypeError(
            "AdapterWrapPolicy decides on the whole model: pass it to FSDP as a policy object."
        )


adapter_wrap_policy = AdapterWrapPolicy()
"""The policy object the FSDP config names (``configs/strategy/fsdp.yaml``)."""


def fsdp_units(model: nn.Module) -> dict[str, list[str]]:
    """Which parameters land in which unit under :data:`adapter_wrap_policy` (unit name ``""``
    is the root): each parameter belongs to its nearest wrapped ancestor, as in FSDP."""
    wrapped = set(wrapped_modules(model))
    units: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        parts = name.split(".")[:-1]
        owner = next(
            (
                ".".join(parts[:i])
                for i in range(len(parts), 0, -1)
                if ".".join(parts[:i]) in wrapped
            ),
            "",
        )
        units.setdefault(owner, []).append(name)
    return units
