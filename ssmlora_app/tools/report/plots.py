"""The report's plots: validation curves per task, and score against adapter parameters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tools.report.results import Cell
from ssmlora_app.tools.report.tables import cells_metric, methods_of, tasks_of, unit


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SsmloraError(
            "Plots need matplotlib: pip install 'ssmlora[report]' (or matplotlib), or pass "
            "--plots false."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(cells: Sequence[Cell], path: Path, percent: bool = True) -> Path:
    """Validation metric vs step, one panel per task, one colour per method (a line per seed)."""
    plt = _pyplot()
    tasks = tasks_of(cells)
    methods = methods_of(cells)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for cell in (c for c in cells if c.task == task):
            scale = unit(cell, percent)
            for i, run in enumerate(cell.runs):
                steps, values = zip(*run.curve)
                label = cell.method if i == 0 else None
                ax.plot(steps, [v * scale for v in values], color=colors[cell.method], label=label)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel(cells_metric(cells, task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_params(cells: Sequence[Cell], path: Path, percent: bool = True) -> Path:
    """Headline metric (mean ± sd over seeds) vs adapter parameters, one series per task."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, task in enumerate(tasks_of(cells)):
        points = [c for c in cells if c.task == task and c.runs[0].adapter_params]
        points.sort(key=lambda c: c.runs[0].adapter_params)
        if not points:
            continue
        xs = [c.runs[0].adapter_params for c in points]
        ys = [c.mean * unit(c, percent) for c in points]
        errs = [(c.sd or 0.0) * unit(c, percent) for c in points]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=f"C{i % 10}", label=task,
                    linestyle="none")  # fmt: skip
        for x, y, cell in zip(xs, ys, points):
            label = cell.method if len(cell.method) <= 40 else cell.method[:39] + "…"
            ax.annotate(
                label, (x, y), fontsize="x-small", xytext=(4, 4), textcoords="offset points"
            )
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (head excluded)")
    ax.set_ylabel("best validation score" + (" (×100)" if percent else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
