"""The one model factory: what training builds and what ``ssmlora export`` rebuilds.

The objective picks the head (a classifier, a causal LM, ...) and builds it through
:mod:`ssmlora_app.backbone`; the adapter method may change how the backbone loads (its
``backbone_kwargs`` hook, e.g. 4-bit weights); the data's lengths are checked against the
backbone's positions; then the adapter is injected.
"""

from __future__ import annotations

from torch import nn

from ssmlora_app.adapters import AdapterConfig, get_method, inject_adapters
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.objectives import Objective


def build_model(
    backbone: BackboneConfig, adapter: AdapterConfig, objective: Objective
) -> nn.Module:
    """The backbone with ``objective``'s head and ``adapter`` injected (fresh adapter weights)."""
    method = get_method(adapter.adapter_type)
    load_kwargs = method.backbone_kwargs(adapter) if method.backbone_kwargs is not None else None
    model = objective.build_model(backbone, load_kwargs)
    objective.check_lengths(model, extra=method.extra_positions(adapter))
    # from_pretrained returns the model in eval mode and Lightning keeps submodules' modes:
    # without this the frozen backbone would fine-tune with its dropout off. Trained in train
    # mode as peft and HF Trainer do (model.backbone.dropout: false zeroes its dropout instead).
    model.train()
    return inject_adapters(model, adapter)
