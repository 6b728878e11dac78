"""SDT / SDLoRA (Galim et al. 2025, "Parameter-Efficient Fine-Tuning of State Space Models",
arXiv 2410.09016): LoRA on Mamba's projections plus sparse updates of selected channels and states
of the SSM parameters (the paper's "selective dimension tuning").

Per layer: LoRA ``out_proj' = out_proj + (alpha/r)·B·A`` on any ``target_modules`` (through the
re-parametrisation mechanism of :mod:`ssmlora_app.adapters.lora`), and sparse deltas on
``A_log`` and on the B/C rows of ``x_proj`` of the selected dimensions: Mamba-1 in
:mod:`~ssmlora_app.adapters.sdt_mamba1`, Mamba-2 in :mod:`~ssmlora_app.adapters.sdt_mamba2`, the
phases in :mod:`~ssmlora_app.adapters.sdt_phases` and the selection in
:mod:`~ssmlora_app.adapters.sdt_select`. Mamba-130M (D 1536, N 16, 24 layers, r 8 on out_proj):
15·4 + 2·16·15 + 8·(1536+768) = 18,972 per layer, 455,328 in all.

**Every update is a weight re-parametrisation** (``torch.nn.utils.parametrize``): ``.weight`` /
``.A_log`` of the adapted module *is* ``W0 + ΔW``, so HF's fused CUDA path, which passes
``x_proj.weight``, ``out_proj.weight`` and ``A_log`` straight into ``mamba_inner_fn``, and its
pure-PyTorch path both see the adapted weights. The frozen tensor stays at
``<module>.parametrizations.<name>.original``; the parametrization modules are
:class:`AdapterLayer` subclasses without a ``base_layer``, so ``adapter_state_dict`` collects
exactly their tensors (LoRA factors, θ, masks, phase) and never the frozen one. For the same
reason the method is mergeable: every update is a fixed change of a weight once trained.

LoRA dropout cannot be expressed as a weight re-parametrisation (there is no input to drop, and
the fused kernels read the weight directly), so SDT's LoRA has none (the paper used 0.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.lora import add_lora, lora_scaling
from ssmlora_app.adapters.mamba_targets import find_mixers, mixer_kind
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.adapters.sdt_mamba1 import inject_mamba1
from ssmlora_app.adapters.sdt_mamba2 import inject_mamba2
from ssmlora_app.adapters.targets import find_config_targets
from ssmlora_app.errors import SsmloraError

SPARSE_TARGETS = ("A_log", "x_proj")
"""SSM tensors that can get sparse deltas: ``A_log`` and the B/C rows of ``x_proj`` (Mamba-2:
heads of ``A_log``/``dt_bias``/``D``, and the B/C rows of ``in_proj``)."""


@dataclass
class SDTConfig(AdapterConfig):
    """SDLoRA on Mamba: LoRA on projections + sparse deltas on selected SSM dimensions."""

    adapter_type: ClassVar[str] = "sdt"

    target_modules: str | list[str] | None = field(default_factory=lambda: ["out_proj"])
    """Linear projections that get LoRA (see :class:`AdapterConfig`); default the mixers'
    ``out_proj``. ``[]`` for none (sparse deltas only)."""

    r: int = 8
    """LoRA rank."""

    alpha: float = 8.0
    """LoRA scale numerator: the update is multiplied by ``alpha/r``."""

    dropout: float = 0.0
    """LoRA input dropout. Must be 0: a weight re-parametrisation has no input to drop."""

    channel_freeze: float = 0.99
    """Fraction of each layer's channels left frozen; ``D − round(channel_freeze·D)`` (≥ 1) are
    selected (paper: 0.99, i.e. 1%). Mamba-2: the fraction of heads (and of B/C groups) left
    frozen."""

    state_freeze: float = 0.75
    """Fraction of the states of a selected channel left frozen in ``A_log``; the top
    ``N − round(state_freeze·N)`` (≥ 1) are trained (paper: 0.75 / 0.9 / 0.95). Unused on
    Mamba-2 (its A has no state axis)."""

    warmup_steps: int = 20
    """Optimizer steps of dense-``ΔA_log`` warm-up before the dimensions are selected (they count
    towards the trainer's ``max_steps``/``max_epochs``)."""

    sparse_targets: list[str] = field(default_factory=lambda: list(SPARSE_TARGETS))
    """Which SSM tensors get sparse deltas: ``A_log`` and/or ``x_proj`` (its B and C rows).
    ``[]``: plain LoRA through the same re-parametrisation (no warm-up). Mamba-2: ``A_log``
    adapts the selected heads of ``A_log``, ``dt_bias`` and ``D``; ``x_proj`` the B/C rows of
    ``in_proj`` of the selected groups."""

    num_zero: int = 0
    """Dimension pruning: per layer, the ``num_zero`` lowest-scoring channels are removed from
    the mixer's output (their ``out_proj`` column is masked to 0). Needs ``out_proj`` in
    ``target_modules``."""

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise SsmloraError(f"SDT LoRA rank r must be a positive integer, got r={self.r!r}.")
        if self.dropout != 0.0:
            raise SsmloraError(
                f"SDTConfig.dropout={self.dropout}: LoRA here is a weight re-parametrisation (so "
                "the fused Mamba kernels see it) and has no input to drop; set dropout: 0."
            )
        for name in ("channel_freeze", "state_freeze"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise SsmloraError(f"SDTConfig.{name} must be in [0, 1), got {value}.")
        unknown = sorted(set(self.sparse_targets) - set(SPARSE_TARGETS))
        if unknown:
            raise SsmloraError(
                f"SDTConfig.sparse_targets has {unknown}; choose from {list(SPARSE_TARGETS)}."
            )
        if self.sparse_targets and (
            not isinstance(self.warmup_steps, int) or self.warmup_steps < 1
        ):
            raise SsmloraError(
                f"SDTConfig.warmup_steps={self.warmup_steps!r}: the selection scores the change "
                "of A_log over the warm-up, so it needs at least 1 step."
            )
        if self.num_zero < 0:
            raise SsmloraError(f"SDTConfig.num_zero must be ≥ 0, got {self.num_zero}.")
        if not self.target_modules and not self.sparse_targets:
            raise SsmloraError("SDTConfig adapts nothing: give target_modules or sparse_targets.")

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.r)


def inject_sdt(model: nn.Module, config: SDTConfig, skip: Sequence[str]) -> list[str]:
    """Register LoRA on the target projections and the sparse deltas on every Mamba mixer's
    ``A_log`` / ``x_proj`` (phase ``IDLE``); returns the adapted module names."""
    names = []
    if config.sparse_targets:
        mixers = find_mixers(model, config, skip)
        if not mixers:
            kinds = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "A_log")})
            raise SsmloraError(
                "SDT's sparse deltas need Mamba mixers (MambaMixer or Mamba2Mixer); "
                f"{type(model).__name__} "
                f"has none{f' (found {kinds})' if kinds else ''}. Use a mamba backbone, or "
                "sparse_targets: [] for plain LoRA."
            )
        for name, mixer in mixers:
            if mixer_kind(mixer) == "mamba2":
                names += inject_mamba2(name, mixer, config.sparse_targets, config.channel_freeze)
            else:
                names += inject_mamba1(
                    name, mixer, config.sparse_targets, config.channel_freeze, config.state_freeze
                )
    if config.target_modules:
        targets = find_config_targets(model, config, skip, types=(nn.Linear,))
        add_lora(model, targets, config.r, config.alpha, reparametrise=True)
        names += targets
    if config.num_zero and not any(n.endswith("out_proj") for n in names):
        raise SsmloraError("SDTConfig.num_zero prunes out_proj columns: add out_proj to targets.")
    return names


def _callbacks(config: SDTConfig) -> list:
    from ssmlora_app.adapters.sdt_select import SDTSelection

    return [SDTSelection()] if config.sparse_targets else []


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    if not any(mixer_kind(m) for m in model.modules()):
        raise SsmloraError("SDT needs a Mamba backbone")
    return {"sdt": SDTConfig(**dict(settings.options))}


register_adapter(
    AdapterMethod(SDTConfig, inject_sdt, mergeable=True, callbacks=_callbacks, bench=_bench)
)
