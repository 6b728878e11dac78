"""Optimizer parameter groups and per-step learning-rate schedules.

Schedulers are classes called as ``scheduler(optimizer, total_steps)`` by the module, so a YAML
``model.scheduler: {class_path: ..., init_args: ...}`` sets everything but the step count, which
comes from the trainer's estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

NO_DECAY_ATTR = "_no_weight_decay"
"""Set ``param._no_weight_decay = True`` on a parameter (e.g. SSM dynamics) to exempt it from
weight decay; the optimizer set-up reads this instead of matching names."""


def param_groups(model: nn.Module) -> list[dict]:
    """Trainable parameters in two groups: with weight decay (matrices), and without (biases,
    norm weights, 1-d parameters, and parameters marked with ``_no_weight_decay``).

    The decay group inherits the optimizer's ``weight_decay``; the other sets it to 0.
    """
    no_decay_ids = set()
    for module in model.modules():
        is_norm = (
            isinstance(module, nn.LayerNorm | nn.GroupNorm)
            or "norm" in type(module).__name__.lower()
        )
        for p in module.parameters(recurse=False):
            if is_norm or p.ndim < 2 or getattr(p, NO_DECAY_ATTR, False):
                no_decay_ids.add(id(p))
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids else decay).append(p)
    groups = [
        {"params": decay, "name": "decay"},
        {"params": no_decay, "name": "no_decay", "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(factory: Callable[[list[dict]], Optimizer], model: nn.Module) -> Optimizer:
    """``factory(param_groups(model))`` (the configured optimizer on the trainable parameters),
    with :func:`prefer_foreach` applied."""
    return prefer_foreach(factory(param_groups(model)))


def prefer_foreach(optimizer: Optimizer) -> Optimizer:
    """Switch a torch optimizer to its multi-tensor (``foreach``) implementation where its
    ``foreach`` was left unset (None) and neither ``fused`` nor ``differentiable`` is on.

    torch picks ``foreach`` by itself only for CUDA tensors; on CPU its default is the for-loop
    implementation: AdamW then runs ~10 small ops per parameter tensor, each dispatched from
    Python, which for adapters (many small tensors: 4 per SSMLoRA module) costs more than the
    arithmetic. ``foreach`` runs each op over all tensors of a group in one call (same values,
    up to float rounding; the temporaries are one group's worth instead of one tensor's, which
    is negligible for adapters). An explicit ``foreach: false`` (or ``fused: true``) is kept.
    Optimizers without a ``foreach`` option are returned unchanged.
    """
    defaults = optimizer.defaults
    if defaults.get("foreach", False) is not None:  # explicit, or no such option
        return optimizer
    if defaults.get("fused") or defaults.get("differentiable"):
        return optimizer
    defaults["foreach"] = True
    for group in optimizer.param_groups:
        if group.get("foreach") is None:
            group["foreach"] = True
    return optimizer


def _warmup_steps(total_steps: int, warmup_ratio: float, warmup_steps: int | None) -> int:
    if not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(
            f"warmup_ratio must be in [0, 1] (a fraction of the steps), got {warmup_ratio}"
        )
    if warmup_steps is not None and warmup_steps < 0:
        raise ValueError(f"warmup_steps must be 0 or more, got {warmup_steps}")
    return warmup_steps if warmup_steps is not None else math.ceil(warmup_ratio * total_steps)


class LinearWarmupDecay(LambdaLR):
    """Linear warm-up from 0 to the base lr, then linear decay to 0 at ``total_steps``."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
    ):
        """
        Args:
            optimizer: Set by the module.
            total_steps: Set by the module from the trainer's estimated optimizer steps.
            warmup_ratio: Fraction of ``total_steps`` spent warming up (LoRA's GLUE recipe: 0.06).
            warmup_steps: Warm-up length in steps; overrides ``warmup_ratio``.
        """
        self.total_steps = max(1, total_steps)
        self.warmup = _warmup_steps(self.total_steps, warmup_ratio, warmup_steps)
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup))


class CosineWarmupDecay(LambdaLR):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the base lr at ``total_steps``."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
        min_lr_ratio: float = 0.0,
    ):
        """
        Args:
            optimizer: Set by the module.
            total_steps: Set by the module from the trainer's estimated optimizer steps.
            warmup_ratio: Fraction of ``total_steps`` spent warming up.
            warmup_steps: Warm-up length in steps; overrides ``warmup_ratio``.
            min_lr_ratio: Final learning rate as a fraction of the base lr.
        """
        self.total_steps = max(1, total_steps)
        self.warmup = _warmup_steps(self.total_steps, warmup_ratio, warmup_steps)
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total_steps - self.warmup))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )


class Plateau(ReduceLROnPlateau):
    """Reduce the lr by ``factor`` when ``monitor`` stops improving (checked after validation)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        monitor: str = "val/loss",
        mode: str = "min",
        factor: float = 0.5,
        patience: int = 2,
    ):
        """
        Args:
            optimizer: Set by the module.
            total_steps: Unused (schedulers share one call signature).
            monitor: Logged metric to watch.
            mode: ``min`` or ``max``.
            factor: Multiply the lr by this on a plateau.
            patience: Validation rounds without improvement before reducing.
        """
        self.monitor = monitor
        super().__init__(optimizer, mode=mode, factor=factor, patience=patience)
