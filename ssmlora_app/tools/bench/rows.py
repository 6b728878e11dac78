"""What ``ssmlora bench`` measures: its own baselines and every registered adapter method's rows
(the method's ``bench`` hook), each built on a fresh backbone with AdamW on what trains."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

import torch
from torch import nn

from ssmlora_app.adapters import (
    ADAPTERS,
    AdapterMethod,
    BenchSettings,
    LoRAConfig,
    inject_adapters,
)
from ssmlora_app.adapters.inject import default_head
from ssmlora_app.adapters.ssmlora_presets import lora_baseline_modules, preset_modules
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import build_optimizer
from ssmlora_app.tools.bench.presets import BenchPreset


class Unavailable(Exception):
    """A method that cannot run here (adapter not in the registry, ``peft`` missing, …)."""


def _unfreeze_heads(model: nn.Module, heads: Sequence[nn.Module]) -> None:
    for head in heads:
        head.requires_grad_(True)


def _build_frozen(model: nn.Module, preset: BenchPreset) -> nn.Module:
    model.requires_grad_(False)
    _unfreeze_heads(model, [model.get_submodule(h) for h in default_head(model)])
    return model


def _build_full(model: nn.Module, preset: BenchPreset) -> nn.Module:
    return model.requires_grad_(True)


def _is_mamba(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in ("mamba", "mamba2")


def _build_peft_lora(model: nn.Module, preset: BenchPreset) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise Unavailable("peft is not installed (pip install peft)") from None
    if _is_mamba(model):
        raise Unavailable("peft's LoRA wrappers are bypassed by Mamba's mixer (it reads .weight)")
    heads = [model.get_submodule(h) for h in default_head(model)]
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[*preset.lora_targets])
    wrapped = get_peft_model(model, config)
    _unfreeze_heads(model, heads)  # the same trained head as ours, without a modules_to_save copy
    return wrapped


def _build_lora_on(placement: str) -> Callable[[nn.Module, BenchPreset], nn.Module]:
    """LoRA r=8 on the linears SSMLoRA's ``full_model`` adapts (``same``), or on the paper's LoRA
    baseline for it (``paper``: q, k, v, o, FFN-in, FFN-out, head); the head learns through its
    adapters in both, as in SSMLoRA's ``full_model``. ``sparse_same``: on the linears of
    ``attention_sparse`` (alternating query/value), the head trained fully as there."""

    def build(model: nn.Module, preset: BenchPreset) -> nn.Module:
        if placement == "sparse_same":
            names = preset_modules(model, "attention_sparse")
            return inject_adapters(model, LoRAConfig(r=8, alpha=16, target_modules=names))
        if placement == "same":
            names = preset_modules(model, "full_model")
        else:
            names = lora_baseline_modules(model, "full_model")
        config = LoRAConfig(r=8, alpha=16, target_modules=names, modules_to_save=[])
        return inject_adapters(model, config)

    return build


Builder = Callable[[nn.Module, BenchPreset], nn.Module]

BASELINES: Mapping[str, Mapping[str, Builder]] = MappingProxyType(
    {
        "frozen": {"frozen": _build_frozen},
        "full": {"full": _build_full},
        "peft_lora": {"peft_lora": _build_peft_lora},
        "lora_full_model": {
            "lora_full_model_same": _build_lora_on("same"),
            "lora_full_model_paper": _build_lora_on("paper"),
        },
        "lora_attention_sparse": {"lora_attention_sparse_same": _build_lora_on("sparse_same")},
    }
)
"""Rows that are not registered adapters: ``frozen`` trains only the task head (the floor of any
adapter); ``full`` trains everything; ``peft_lora`` is ``peft``'s LoRA on the preset's targets;
``lora_full_model`` is LoRA where SSMLoRA's ``full_model`` sits (``_same``: the cost of the state
term alone) and on the paper's LoRA baseline for it (``_paper``); ``lora_attention_sparse`` is
LoRA where ``attention_sparse`` sits (its paper baseline is ``lora`` itself). Every registered
adapter method adds the rows of its ``bench`` hook (:meth:`AdapterMethod.bench_configs`)."""

SAME_MODULES: Mapping[str, str] = MappingProxyType(
    {
        "ssmlora_full_model": "lora_full_model_same",
        "ssmlora_attention_sparse": "lora_attention_sparse_same",
    }
)
"""Row -> the LoRA row on exactly the same linears (``*_vs_same`` ratios: the state term's cost)."""


def _registered_rows(method: AdapterMethod, preset: BenchPreset, base: nn.Module) -> dict:
    settings = BenchSettings(
        tuple(preset.lora_targets),
        MappingProxyType(dict(preset.method_options.get(method.name, {}))),
    )
    return {
        row: (lambda model, _, config=config: inject_adapters(model, config))
        for row, config in method.bench_configs(base, settings).items()
    }


def plan_rows(
    preset: BenchPreset, chosen: Sequence[str], new_model: Callable[[], nn.Module], notes: list[str]
) -> dict[str, Builder]:
    """Row name -> builder for ``chosen`` (baselines, registered methods, or single rows of
    either); raises :class:`SsmloraError` naming the choices for an unknown name."""
    candidates: dict[str, tuple[str, Builder]] = {}
    for name, rows in BASELINES.items():
        candidates.update({row: (name, build) for row, build in rows.items()})
    base = new_model()  # read only by the methods' bench hooks: one build (a roberta-base takes s)
    for name, method in ADAPTERS.items():
        try:
            rows = _registered_rows(method, preset, base)
        except SsmloraError as err:
            if name in chosen:
                notes.append(f"{name}: skipped ({err})")
            continue
        candidates.update({row: (name, build) for row, build in rows.items()})
    known = set(ADAPTERS) | set(BASELINES) | set(candidates)
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise SsmloraError(f"Unknown bench method(s) {unknown}; choose from {sorted(known)}.")
    return {
        row: build for row, (name, build) in candidates.items() if name in chosen or row in chosen
    }


@dataclass
class Runner:
    """One method's model, its optimizer, and its two measured calls."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    trainable: int

    def train_step(self, batch: dict[str, torch.Tensor]) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.model(**batch).loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, batch: dict[str, torch.Tensor]) -> None:
        self.model.eval()
        self.model(**{k: v for k, v in batch.items() if k != "labels"})


def build_runners(
    preset: BenchPreset,
    backbone: BackboneConfig,
    methods: Sequence[str],
    device: torch.device,
    notes: list[str],
) -> dict[str, Runner]:
    """One freshly built backbone per row (same seed), adapted, with AdamW on what trains, built
    as ``ssmlora fit`` builds it (:func:`~ssmlora_app.optim.build_optimizer`)."""

    def new_model() -> nn.Module:
        return build_classifier(backbone, 2, "single_label_classification")

    runners = {}
    for row, build in plan_rows(preset, methods, new_model, notes).items():
        try:
            model = build(new_model(), preset).to(device)
        except (Unavailable, SsmloraError, ImportError, ValueError, KeyError) as err:
            notes.append(f"{row}: skipped ({err})")
            continue
        optimizer = build_optimizer(partial(torch.optim.AdamW, lr=1e-4), model)  # as fit's
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        runners[row] = Runner(model, optimizer, trainable)
    return runners
