"""``ssmlora reduce``: balanced truncation of a saved HRM adapter into a smaller modal one (the
"Hankel reduced-order modeling" of the HRM paper; HRM's own subcommand, registered by
:mod:`ssmlora_app.adapters.hrm`).

Reads an adapter directory written by :func:`ssmlora_app.adapters.save_adapter`, reduces every
layer with :func:`ssmlora_app.ssm.reduction.balanced_truncation` and
:func:`~ssmlora_app.ssm.reduction.to_modal`, and writes a directory (through the one adapter
folder writer, :func:`~ssmlora_app.adapters.io.write_adapter_folder`) that
:func:`~ssmlora_app.adapters.load_adapter` rebuilds as :class:`HRMModalLayer` layers (config
``modal=True`` with per-layer ``state_sizes``), which run through the same FFT scan. The gate and
the trained head are copied unchanged; the reduced adapter can be evaluated zero-shot or
fine-tuned (its gate, or all of it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torch import Tensor

from ssmlora_app.adapters.hrm_calibration import (  # noqa: F401 (the calibration API, here too)
    empirical_gramians,
    empirical_observability_gramians,
)
from ssmlora_app.adapters.hrm_layers import discretize, modal_tensors
from ssmlora_app.adapters.io import (
    config_record,
    read_adapter_config,
    read_adapter_weights,
    write_adapter_folder,
)
from ssmlora_app.errors import SsmloraError
from ssmlora_app.ssm.reduction import balanced_truncation, to_modal

HSV_NAME = "hankel_singular_values.json"
HSV_PLOT_NAME = "hankel_singular_values.png"
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
    train: Literal["all", "gate"] = "all",
    observability: Mapping[str, Tensor] | None = None,
) -> ReductionReport:
    """Reduce every layer of the HRM adapter in ``src_dir`` and write it to ``out_dir``.

    Args:
        src_dir: A (full, not yet reduced) HRM adapter directory.
        eps: Keep the states with Hankel singular value ``σ_i/σ_1 ≥ eps`` (e.g. 0.1 or 0.01).
        out_dir: Where to write the reduced adapter, ``hankel_singular_values.json`` and
            ``reduction_report.json``.
        gramians: Empirical controllability Gramians by layer name (from
            :func:`~ssmlora_app.adapters.hrm_calibration.empirical_gramians`) to use instead of
            the closed form.
        train: What a later fit from the reduced adapter trains (its config's ``train``).
        observability: Empirical observability Gramians by layer name (from
            :func:`~ssmlora_app.adapters.hrm_calibration.empirical_observability_gramians`)
            to use instead of the closed form.

    Returns:
        The :class:`ReductionReport` (also written as JSON).
    """
    config = read_adapter_config(src_dir)
    if config.adapter_type != "hrm":
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
        dt_range = (config.dt_min, config.dt_max) if config.dt_clamp else None
        A_bar, B_bar = discretize(p["log_A"], p["log_dt"], p["B"], dt_range)
        Wc = None if gramians is None else gramians[name]
        Wo = None if observability is None else observability[name]
        bt = balanced_truncation(A_bar, B_bar, p["C"], eps, Wc=Wc, Wo=Wo)
        modal = to_modal(bt.A, bt.B, bt.C)
        new = modal_tensors(modal.lam, modal.B, modal.C, modal.n_complex)
        new["gate"] = tensors[f"{name}.gate"].float()
        out.update({f"{name}.{k}": v for k, v in new.items()})
        report.orders[name] = bt.order
        report.complex_modes[name] = modal.n_complex
        report.error_bounds[name] = bt.error_bound if Wc is None and Wo is None else None
        report.hsv[name] = bt.hsv.tolist()
        report.params_before += sum(tensors[k].numel() for k in layer_keys if k.startswith(name))
        report.params_after += sum(v.numel() for v in new.values())
    out.update({k: v for k, v in tensors.items() if k not in layer_keys})  # the head
    reduced = dataclasses.replace(
        config,
        modal=True,
        state_sizes=dict(report.orders),
        complex_modes=dict(report.complex_modes),
        train=train,
    )
    summary = dataclasses.asdict(report) | {"saving": report.saving}
    write_adapter_folder(
        out_dir,
        out,
        {"ssmlora": config_record(reduced)},
        extra_json={HSV_NAME: report.hsv, REPORT_NAME: summary},
    )
    write_hsv_plot(report.hsv, eps, Path(out_dir) / HSV_PLOT_NAME)
    return report


def write_hsv_plot(hsv: Mapping[str, list[float]], eps: float, path: Path) -> Path | None:
    """The Hankel-singular-value decay ``σ_i/σ_1`` of every layer (log scale) with the cut at
    ``eps``, as a PNG at ``path``; None (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in hsv.items():
        top = values[0] if values and values[0] > 0 else 1.0
        ax.semilogy(range(1, len(values) + 1), [max(v / top, 1e-16) for v in values],
                    marker=".", label=name)  # fmt: skip
    ax.axhline(eps, color="black", linestyle="--", linewidth=1, label=f"eps = {eps:g}")
    ax.set(xlabel="state i", ylabel="σ_i / σ_1", title="Hankel singular values")
    if len(hsv) <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reduce_command(
    adapter: str, out: str, eps: float = 0.1, train: Literal["all", "gate"] = "all"
) -> None:
    """Balanced truncation of a trained HRM adapter (the HRM paper's Hankel reduced-order model):
    Hankel singular values, order from eps, complex modes so the reduced adapter still runs
    through the FFT scan.

    Args:
        adapter: Folder of a trained HRM adapter (as written by fit's export).
        out: Folder for the reduced adapter, hankel_singular_values.json and reduction_report.json.
        eps: Keep the states whose Hankel singular value is at least eps times the largest.
        train: What a later fit from the reduced adapter trains: ``all`` or ``gate`` (only the
            gates; use it with ``--model.adapter null --model.init_adapter_from OUT``).
    """
    if train not in ("all", "gate"):
        raise SsmloraError(f"--train must be 'all' or 'gate', got {train!r}.")
    report = reduce_hrm_adapter(adapter, eps, out, train=train)
    print(report.summary())
    print(f"Reduced adapter written to {out}")
    plot = Path(out) / HSV_PLOT_NAME
    if plot.is_file():
        print(f"Hankel singular values plotted in {plot}")
    else:
        print("Hankel singular value plot skipped: pip install matplotlib")
