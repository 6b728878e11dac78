"""BitFit (Ben Zaken et al. 2022, arXiv 2106.10199): train only the bias terms of the backbone,
plus the task head; every weight stays frozen.

The baseline of the SSMLoRA paper's encoder tables and of the PEFT-of-SSMs benchmark: on Mamba the
only biases are those of ``conv1d`` and ``dt_proj`` (Mamba-130M: 24 · (1536 + 1536) = 73,728
parameters). Nothing is injected, so it is identity at init and "merges" trivially: the trained
biases are the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.method import AdapterMethod
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.errors import SsmloraError


@dataclass
class BitFitConfig(AdapterConfig):
    """BitFit: every bias of the backbone trains (and the task head); weights stay frozen."""

    adapter_type: ClassVar[str] = "bitfit"


def inject_bitfit(model: nn.Module, config: BitFitConfig, skip: Sequence[str]) -> list[str]:
    """Unfreeze the parameters named ``bias`` outside the head; returns their module names."""
    names = []
    for name, param in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        if leaf == "bias" and not any(module == s or module.startswith(f"{s}.") for s in skip):
            param.requires_grad_(True)
            names.append(module)
    if not names:
        raise SsmloraError(
            f"BitFit: {type(model).__name__} has no bias outside its head (e.g. Llama's linears "
            "have none); choose another adapter."
        )
    return names


register_adapter(AdapterMethod(BitFitConfig, inject_bitfit, mergeable=True))
