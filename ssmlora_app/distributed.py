"""FSDP wrapping for adapters: no FSDP unit mixes frozen and trainable parameters.

A unit that mixes them keeps gradient buffers for its whole flat parameter, as if nothing were
frozen. The policy makes a unit of every module that directly owns a trainable parameter (LoRA's
``lora_A``/``lora_B``, an SSMLoRA or HRM layer, the head's linears), of every frozen linear or
embedding (so an adapter's ``base_layer`` never shares its parent's unit), and of every
transformer block; what is left in a block's unit (its norms) is frozen.
"""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

BLOCK_SUFFIXES = ("Layer", "DecoderLayer", "Block")
"""Class-name endings of transformer blocks (RobertaLayer, LlamaDecoderLayer, GPT2Block,
MambaBlock)."""


def _owns_parameters(module: nn.Module) -> tuple[bool, bool]:
    """(owns any parameter directly, owns a trainable one directly)."""
    params = list(module.parameters(recurse=False))
    return bool(params), any(p.requires_grad for p in params)


def adapter_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """``auto_wrap_policy`` for ``FSDPStrategy`` (signature of torch's FSDP policies)."""
    if recurse:
        return True  # always look inside
    owns, owns_trainable = _owns_parameters(module)
    if owns_trainable:
        return True
    if owns and isinstance(module, nn.Linear | nn.Embedding | Conv1D):
        return True
    return type(module).__name__.endswith(BLOCK_SUFFIXES)


def fsdp_units(model: nn.Module) -> dict[str, list[str]]:
    """Which parameters land in which unit under :func:`adapter_wrap_policy` (unit name ``""`` is
    the root): each parameter belongs to its nearest wrapped ancestor, as in FSDP."""
    wrapped = {
        name
        for name, module in model.named_modules()
        if name and adapter_wrap_policy(module, False, 0)
    }
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
