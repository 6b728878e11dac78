"""Full fine-tuning as a method: every backbone parameter trains (the baseline the PEFT papers
compare with: LoRA, Hu et al. 2021, Table 2; SSMLoRA, Yu et al. 2025, Table 1).

Nothing is injected: the injector unfreezes the backbone, so what trains is the backbone itself
plus the task head, and the "adapter" saved with a run is the whole model's weights. Use it to
measure the ceiling a PEFT method is compared with; its checkpoints are as large as the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.method import AdapterMethod
from ssmlora_app.adapters.registry import register_adapter


@dataclass
class FullFinetuneConfig(AdapterConfig):
    """Full fine-tuning: every parameter of the backbone and the head trains."""

    adapter_type: ClassVar[str] = "full"


def inject_full(model: nn.Module, config: FullFinetuneConfig, skip: Sequence[str]) -> list[str]:
    """Unfreeze every parameter (the head under ``skip`` is unfrozen by the caller)."""
    model.requires_grad_(True)
    return []


register_adapter(AdapterMethod(FullFinetuneConfig, inject_full, mergeable=True))
