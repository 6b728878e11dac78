"""``ssmlora reduce``: balanced truncation of a saved HRM adapter into a smaller modal one.

Reads an adapter directory written by :func:`ssmlora_app.adapters.save_adapter`, reduces every
layer with :func:`ssmlora_app.ssm.reduction.balanced_truncation` and
:func:`~ssmlora_app.ssm.reduction.to_modal` (spec §4.3), and writes a directory that
:func:`~ssmlora_app.adapters.load_adapter` rebuilds as :class:`HRMModalLayer` layers (config
``modal=True`` with per-layer ``state_sizes``), which run through the same FFT scan. The gate and
the trained head are copied unchanged; the reduced adapter can be evaluated zero-shot or
fine-tuned (its gate, or all of it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ssmlora_app.adapters.hrm import HRMConfig, HRMLayer, discretize, hrm_layers, modal_tensors
from ssmlora_app.adapters.io import (
    CONFIG_NAME,
    PREFIX,
    WEIGHTS_NAME,
    read_adapter_config,
    read_adapter_weights,
)
from ssmlora_app.errors import SsmloraError
from ssmlora_app.ssm.reduction import balanced_truncation, to_modal
from ssmlora_app.ssm.scan import states_fft

HSV_NAME = "hankel_singular_values.json"
REPORT_NAME = "reduction_report.json"


@dataclass
class ReductionReport:
    """What :func:`reduce_hrm_adapter` did, per layer and in total."""

    eps: float
    """Relative Hankel-singular-value threshold used."""
    orders: dict[str, int] = field(default_factory=dict)
    """Reduced order ``d̂`` per layer (states of the dense reduced system)."""
    complex_modes: dict[str, int] = field(default_factory=dict)
    """Complex modes per layer (each one conjugate pair, two of the ``d̂`` states)."""
    error_bounds: dict[str, float | None] = field(default_factory=dict)
    """Glover bound ``2 Σ_{i>d̂} σ_i`` on each layer's ``‖G − Ĝ‖_H∞`` (None with empirical
    Gramians, where it is no guarantee); the layer's output error is at most ``|g|`` times it."""
    hsv: dict[str, list[float]] = field(default_factory=dict)
    """Hankel singular values per layer, descending."""
    params_before: int = 0
    """SSM parameters (with gates) of the source adapter."""
    params_after: int = 0
    """SSM parameters (with gates) of the reduced adapter."""

    @property
    def saving(self) -> float:
        """Fraction of SSM parameters removed."""
        return 1 - self.params_after / self.params_before

    def summary(self) -> str:
        """Human-readable lines: d̂ per layer, the parameter saving, the error bounds."""
        lines = [
            f"{name}: d̂={self.orders[name]} ({self.complex_modes[name]} complex-conjugate pairs), "
            f"bound={self.error_bounds[name]}"
            for name in self.orders
        ]
        lines.append(
            f"SSM parameters {self.params_before:,} -> {self.params_after:,} "
            f"(saving {self.saving:.1%}) at eps={self.eps}"
        )
        return "\n".join(lines)


def _layer_names(tensors: Mapping[str, Tensor]) -> list[str]:
    return [k.removesuffix(".log_dt") for k in tensors if k.endswith(".log_dt")]


def reduce_hrm_adapter(
    src_dir: str | os.PathLike,
    eps: float,
    out_dir: str | os.PathLike,
    gramians: Mapping[str, Tensor] | None = None,
) -> ReductionReport:
    """Reduce every layer of the HRM adapter in ``src_dir`` and write it to ``out_dir``.

    Args:
        src_dir: A (full, not yet reduced) HRM adapter directory.
        eps: Keep the states with Hankel singular value ``σ_i/σ_1 ≥ eps`` (e.g. 0.1 or 0.01).
        out_dir: Where to write the reduced adapter, ``hankel_singular_values.json`` and
            ``reduction_report.json``.
        gramians: Empirical controllability Gramians by layer name (from
            :func:`empirical_gramians`) to use instead of the closed form.

    Returns:
        The :class:`ReductionReport` (also written as JSON).
    """
    config = read_adapter_config(src_dir)
    if not isinstance(config, HRMConfig):
        raise SsmloraError(f"{src_dir} holds a {config.adapter_type!r} adapter, not an HRM one.")
    if config.modal:
        raise SsmloraError(f"{src_dir} is already reduced; reduce the full adapter it came from.")
    tensors = read_adapter_weights(src_dir)
    names = _layer_names(tensors)
    report = ReductionReport(eps=eps)
    out: dict[str, Tensor] = {}
    layer_keys = {f"{n}.{p}" for n in names for p in ("log_A", "log_dt", "B", "C", "gate")}
    for name in names:
        p = {k: tensors[f"{name}.{k}"].double() for k in ("log_A", "log_dt", "B", "C", "gate")}
        A_bar, B_bar = discretize(p["log_A"], p["log_dt"], p["B"])
        Wc = None if gramians is None else gramians[name]
        bt = balanced_truncation(A_bar, B_bar, p["C"], eps, Wc=Wc)
        modal = to_modal(bt.A, bt.B, bt.C)
        new = modal_tensors(modal.lam, modal.B, modal.C, modal.n_complex)
        new["gate"] = tensors[f"{name}.gate"].float()
        out.update({f"{name}.{k}": v for k, v in new.items()})
        report.orders[name] = bt.order
        report.complex_modes[name] = modal.n_complex
        report.error_bounds[name] = bt.error_bound if Wc is None else None
        report.hsv[name] = bt.hsv.tolist()
        report.params_before += sum(tensors[k].numel() for k in layer_keys if k.startswith(name))
        report.params_after += sum(v.numel() for v in new.values())
    out.update({k: v for k, v in tensors.items() if k not in layer_keys})  # the head
    reduced = dataclasses.replace(
        config,
        modal=True,
        state_sizes=dict(report.orders),
        complex_modes=dict(report.complex_modes),
    )
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({PREFIX + k: v.contiguous() for k, v in out.items()}, directory / WEIGHTS_NAME)
    meta = {"ssmlora": {"adapter": reduced.adapter_type, "config": dataclasses.asdict(reduced)}}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    (directory / HSV_NAME).write_text(json.dumps(report.hsv, indent=2) + "\n")
    summary = dataclasses.asdict(report) | {"saving": report.saving}
    (directory / REPORT_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return report


@torch.no_grad()
def empirical_gramians(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Controllability Gramians ``Wc = E[s_t s_tᵀ] (d, d)`` (float64) of each :class:`HRMLayer`
    of ``model``, from the states its inputs drive over ``batches`` (model inputs; ``labels`` are
    dropped, positions with ``attention_mask == 0`` are skipped). White unit-variance inputs would
    give the closed-form Gramian, so the two are on one scale."""
    layers = {n: m for n, m in hrm_layers(model).items() if isinstance(m, HRMLayer)}
    if not layers:
        raise SsmloraError("The model has no (full) HRM layers: inject or load an HRM adapter.")
    sums = {n: torch.zeros(m.B.shape[0], m.B.shape[0], dtype=torch.float64) for n, m in layers.items()}  # fmt: skip
    counts = dict.fromkeys(layers, 0)
    mask: list[Tensor | None] = [None]

    def make_hook(name: str, layer: HRMLayer):
        def hook(module, args, kwargs):
            u = (args[1] if len(args) > 1 else kwargs["input_tensor"]) if layer.post_ln else args[0]
            A_bar, B_bar, _ = layer.system()
            s = states_fft(u.float() @ B_bar.T, A_bar)  # (B, L, d)
            keep = torch.ones(s.shape[:2], dtype=torch.bool) if mask[0] is None else mask[0] > 0
            s = s[keep.to(s.device)].double().cpu()  # (N, d)
            sums[name] += s.T @ s
            counts[name] += s.shape[0]

        return hook

    handles = [
        layer.register_forward_pre_hook(make_hook(n, layer), with_kwargs=True)
        for n, layer in layers.items()
    ]
    try:
        for batch in batches:
            mask[0] = batch.get("attention_mask")
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    if not all(counts.values()):
        raise SsmloraError("empirical_gramians saw no tokens: pass at least one non-empty batch.")
    return {n: sums[n] / counts[n] for n in layers}
