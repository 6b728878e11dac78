"""``ssmlora report``: a results table (and plots) from the TensorBoard logs of many runs.

Every folder under the given roots that holds ``events.out.tfevents.*`` and ``hparams.yaml`` is a
run (``runs/<name>/version_N``). From each: the task and its headline metric (``task_info``, e.g.
``val/mcc`` for CoLA, ``val_matched/accuracy`` for MNLI), the adapter config, the parameter
counts, the seed (``seed_everything`` in ``config.yaml``) and the validation curve. A run's score is
its best validation value over the evaluations (the papers' GLUE protocol); runs with the same task
and adapter config are seeds of one cell, reported as mean ± sample standard deviation.

The main table follows the GLUE tables of the LoRA/adapter papers: one row per method with its
number of adapter parameters (head excluded), one column per task, and the average.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ssmlora_app.errors import SsmloraError
from ssmlora_app.export import read_run_hparams

LOWER_IS_BETTER = ("mse", "loss")
PERCENT = ("accuracy", "f1", "mcc", "pearson", "spearman")
"""Metrics shown ×100, as the papers do."""
TASK_ORDER = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb", "wnli")
"""Column order of the papers' GLUE tables; other tasks follow alphabetically."""


@dataclass
class RunResult:
    """One run's headline result."""

    path: Path
    task: str
    adapter: dict
    """The adapter config (``adapter_type`` + fields) from ``hparams.yaml``."""
    metric: str
    """TensorBoard tag of the headline metric (``val/accuracy``)."""
    best: float
    best_step: int
    best_epoch: int | None
    seed: int | None
    adapter_params: int | None
    trainable_params: int | None
    curve: list[tuple[int, float]] = field(repr=False)
    """``(step, value)`` of every evaluation."""

    @property
    def method_key(self) -> str:
        return json.dumps(self.adapter, sort_keys=True)


@dataclass
class Cell:
    """The seeds of one (task, method)."""

    task: str
    method: str
    metric: str
    runs: list[RunResult]

    @property
    def values(self) -> list[float]:
        return [r.best for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def find_runs(roots: Sequence[str | Path]) -> list[Path]:
    """Folders under ``roots`` holding TensorBoard event files, sorted."""
    found = set()
    for root in map(Path, roots):
        if not root.is_dir():
            raise SsmloraError(f"Runs folder {root} does not exist.")
        found.update(p.parent for p in root.rglob("events.out.tfevents.*"))
    return sorted(found)


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _seed(run: Path) -> int | None:
    path = run / "config.yaml"
    if not path.is_file():
        return None
    seed = (yaml.safe_load(path.read_text()) or {}).get("seed_everything")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def read_run(run: Path) -> RunResult | None:
    """The result of one run folder; None when it has no hparams.yaml or no headline metric yet."""
    if not (run / "hparams.yaml").is_file():
        return None
    hparams = read_run_hparams(run)
    info = hparams.get("task_info") or {}
    if not info.get("metrics") or not info.get("eval_splits"):
        return None
    metric = info["metrics"][0]
    tag = f"{info['eval_splits'][0].replace('validation', 'val')}/{metric}"
    scalars = _scalars(run)
    curve = scalars.get(tag)
    if not curve:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    best_step, best = pick(curve, key=lambda point: point[1])
    epochs = [value for step, value in scalars.get("epoch", []) if step <= best_step]
    return RunResult(
        path=run,
        task=info["task"],
        adapter=dict(hparams.get("adapter") or {}),
        metric=tag,
        best=best,
        best_step=best_step,
        best_epoch=int(epochs[-1]) if epochs else None,
        seed=_seed(run),
        adapter_params=hparams.get("params/adapter"),
        trainable_params=hparams.get("params/trainable"),
        curve=curve,
    )


def method_labels(results: Sequence[RunResult]) -> dict[str, str]:
    """A short label per adapter config: its type, plus the fields that tell apart configs of
    the same type (``lora (r=4)``, ``lora (r=8)``)."""
    configs = {r.method_key: r.adapter for r in results}
    labels = {}
    for key, config in configs.items():
        kind = config.get("adapter_type", "?")
        same = [c for c in configs.values() if c.get("adapter_type") == kind]
        differing = sorted(
            name for name in config if len({json.dumps(c.get(name)) for c in same}) > 1
        )
        details = ", ".join(f"{name}={config.get(name)}" for name in differing)
        labels[key] = f"{kind} ({details})" if details else kind
    return labels


def group(results: Sequence[RunResult]) -> list[Cell]:
    labels = method_labels(results)
    cells: dict[tuple[str, str], Cell] = {}
    for result in results:
        key = (result.task, result.method_key)
        if key not in cells:
            cells[key] = Cell(result.task, labels[result.method_key], result.metric, [])
        cells[key].runs.append(result)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: (r.seed is None, r.seed, str(r.path)))
    return list(cells.values())


def _tasks(cells: Sequence[Cell]) -> list[str]:
    names = {c.task for c in cells}
    return [t for t in TASK_ORDER if t in names] + sorted(names - set(TASK_ORDER))


def _methods(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.method for c in cells))


def _scale(cell: Cell, percent: bool) -> float:
    return 100.0 if percent and cell.metric.rsplit("/", 1)[-1] in PERCENT else 1.0


def _format(cell: Cell | None, percent: bool, latex: bool = False) -> str:
    if cell is None:
        return "–"
    scale = _scale(cell, percent)
    digits = 1 if scale == 100 else 3
    text = f"{cell.mean * scale:.{digits}f}"
    if cell.sd is not None:
        sd = f"{cell.sd * scale:.{digits}f}"
        text += rf"$_{{\pm {sd}}}$" if latex else f" ± {sd}"
    return text


def _params(count: float | None) -> str:
    if count is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.{1 if count < 100 * size else 0}f}{unit}"
    return str(int(count))


def _paper_rows(
    cells: Sequence[Cell], percent: bool, latex: bool = False
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paper-layout table: method, # params, one column per task, avg."""
    tasks = _tasks(cells)
    params = r"\# Params" if latex else "# Params"
    header = ["Method", params, *[f"{t} ({cells_metric(cells, t)})" for t in tasks], "Avg."]
    if latex:
        header = [h.replace("_", r"\_") for h in header]
    rows = []
    for method in _methods(cells):
        by_task = {c.task: c for c in cells if c.method == method}
        counts = {r.adapter_params for c in by_task.values() for r in c.runs}
        counts.discard(None)
        params = _params(counts.pop()) if len(counts) == 1 else ("varies" if counts else "–")
        means = [c.mean * _scale(c, percent) for c in by_task.values()]
        average = f"{statistics.fmean(means):.1f}" if len(by_task) == len(tasks) else "–"
        values = [_format(by_task.get(t), percent, latex) for t in tasks]
        name = method.replace("_", r"\_") if latex else method
        rows.append([name, params, *values, average])
    return header, rows


def cells_metric(cells: Sequence[Cell], task: str) -> str:
    return next(c.metric.rsplit("/", 1)[-1] for c in cells if c.task == task)


def _detail_rows(cells: Sequence[Cell]) -> tuple[list[str], list[list[str]]]:
    header = [
        "task",
        "method",
        "metric",
        "seeds",
        "mean",
        "sd",
        "adapter_params",
        "trainable_params",
        "best_epochs",
        "runs",
    ]
    rows = []
    for task in _tasks(cells):
        for cell in (c for c in cells if c.task == task):
            first = cell.runs[0]
            rows.append(
                [
                    task,
                    cell.method,
                    cell.metric,
                    " ".join(str(r.seed) for r in cell.runs),
                    f"{cell.mean:.6g}",
                    "" if cell.sd is None else f"{cell.sd:.6g}",
                    str(first.adapter_params or ""),
                    str(first.trainable_params or ""),
                    " ".join(str(r.best_epoch) for r in cell.runs),
                    " ".join(str(r.path) for r in cell.runs),
                ]
            )
    return header, rows


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(cells: Sequence[Cell], percent: bool = True) -> str:
    """The paper-layout table, then the per-cell details (seeds, best epoch, parameters)."""
    header, rows = _paper_rows(cells, percent)
    detail_header, detail = _detail_rows(cells)
    detail = [row[:-1] for row in detail]  # run paths: CSV only
    scale = " (×100 for accuracy, F1, MCC and correlations)" if percent else ""
    return (
        f"Best validation score per run, mean ± sd over seeds{scale}; # Params: adapter "
        "parameters without the task head.\n\n"
        + _markdown(header, rows)
        + "\n"
        + _markdown(detail_header[:-1], detail)
    )


def csv_text(cells: Sequence[Cell]) -> str:
    """One line per (task, method): seeds, mean, sd, parameter counts, best epochs, run folders."""
    header, rows = _detail_rows(cells)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def latex(cells: Sequence[Cell], percent: bool = True) -> str:
    """The paper-layout table as a LaTeX ``tabular`` (booktabs)."""
    header, rows = _paper_rows(cells, percent, latex=True)
    lines = [
        r"\begin{tabular}{l r " + "c " * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


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
    tasks = _tasks(cells)
    methods = _methods(cells)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for cell in (c for c in cells if c.task == task):
            scale = _scale(cell, percent)
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
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, task in enumerate(_tasks(cells)):
        points = [c for c in cells if c.task == task and c.runs[0].adapter_params]
        points.sort(key=lambda c: c.runs[0].adapter_params)
        if not points:
            continue
        xs = [c.runs[0].adapter_params for c in points]
        ys = [c.mean * _scale(c, percent) for c in points]
        errs = [(c.sd or 0.0) * _scale(c, percent) for c in points]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=f"C{i % 10}", label=task)
        for x, y, cell in zip(xs, ys, points):
            ax.annotate(
                cell.method, (x, y), fontsize="x-small", xytext=(4, 4), textcoords="offset points"
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


def build_report(
    roots: Sequence[str | Path],
    out: str | Path,
    formats: Sequence[str] = ("md", "csv"),
    plots: bool = True,
    percent: bool = True,
) -> dict[str, Path]:
    """Read every run under ``roots`` and write ``report.<fmt>`` (and PNG plots) to ``out``."""
    unknown = set(formats) - {"md", "csv", "tex"}
    if unknown:
        raise SsmloraError(f"Unknown report formats {sorted(unknown)}: use md, csv and/or tex.")
    results = [r for r in map(read_run, find_runs(roots)) if r is not None]
    if not results:
        raise SsmloraError(
            f"No finished runs under {', '.join(map(str, roots))}: expected folders with "
            "TensorBoard events, hparams.yaml and at least one validation."
        )
    cells = group(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writers = {
        "md": lambda: markdown(cells, percent),
        "csv": lambda: csv_text(cells),
        "tex": lambda: latex(cells, percent),
    }
    written = {}
    for fmt in formats:
        path = out / f"report.{fmt}"
        path.write_text(writers[fmt]())
        written[fmt] = path
    if plots:
        written["curves"] = plot_curves(cells, out / "val_curves.png", percent)
        written["params"] = plot_params(cells, out / "metric_vs_params.png", percent)
    return written


def report(
    runs: str | list[str] = "runs",
    out: str = "report",
    formats: list[str] | None = None,
    plots: bool = True,
    percent: bool = True,
) -> None:
    """Results table of many runs (tasks × adapters × seeds) from their TensorBoard logs: mean ±
    sd over seeds per task and adapter, adapter parameters, best epoch; Markdown, CSV, LaTeX, and
    PNG plots (validation metric vs step, score vs adapter parameters).

    Args:
        runs: Folder(s) searched recursively for runs, e.g. ``runs`` or ``[runs/a, runs/b]``.
        out: Folder for report.md/.csv/.tex and the plots.
        formats: Any of md, csv, tex (default: md and csv).
        plots: Also write val_curves.png and metric_vs_params.png (needs matplotlib).
        percent: Show accuracy, F1, MCC and correlations ×100, as the papers do.
    """
    roots = [runs] if isinstance(runs, str) else list(runs)
    written = build_report(roots, out, formats or ["md", "csv"], plots, percent)
    if "md" in written:
        print(written["md"].read_text())
    for name, path in written.items():
        print(f"{name}: {path}")
