"""The report's tables: the paper layout (one row per method, one column per task, the average)
and the per-cell details, as Markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence

from ssmlora_app.tools.report.results import Cell

PERCENT = ("accuracy", "f1", "mcc", "pearson", "spearman")
"""Metrics shown ×100, as the papers do."""
TASK_ORDER = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb", "wnli")
"""Column order of the papers' GLUE tables; other tasks follow alphabetically."""


def tasks_of(cells: Sequence[Cell]) -> list[str]:
    names = {c.task for c in cells}
    return [t for t in TASK_ORDER if t in names] + sorted(names - set(TASK_ORDER))


def methods_of(cells: Sequence[Cell]) -> list[str]:
    return list(dict.fromkeys(c.method for c in cells))


def unit(cell: Cell, percent: bool) -> float:
    return 100.0 if percent and cell.metric.rsplit("/", 1)[-1] in PERCENT else 1.0


COLLAPSED = "collapsed"
"""The mark of a cell with a run whose best score stays at the majority-class baseline."""


def _format(cell: Cell | None, percent: bool, latex: bool = False) -> str:
    if cell is None:
        return "–"
    scale = unit(cell, percent)
    digits = 1 if scale == 100 else 3
    text = f"{cell.mean * scale:.{digits}f}"
    if cell.sd is not None:
        sd = f"{cell.sd * scale:.{digits}f}"
        text += rf"$_{{\pm {sd}}}$" if latex else f" ± {sd}"
    if cell.collapsed:
        text += rf" ({COLLAPSED}$^\dagger$)" if latex else f" ({COLLAPSED}†)"
    return text


def collapse_notes(cells: Sequence[Cell], percent: bool = True) -> list[str]:
    """One footnote line per collapsed run: its score, the baseline it stays at, its folder."""
    lines = []
    for cell in cells:
        scale = unit(cell, percent)
        for run in cell.collapsed:
            at = (
                f"the majority-class accuracy {run.baseline * scale:.1f}"
                if run.baseline is not None and run.metric.endswith("accuracy")
                else "0, the MCC of a constant prediction"
            )
            lines.append(
                f"{cell.task}, {cell.method}, seed {run.seed}: best {run.best * scale:.1f} stays at "
                f"{at} ({run.path})"
            )
    return lines


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
    tasks = tasks_of(cells)
    params = r"\# Params" if latex else "# Params"
    header = ["Method", params, *[f"{t} ({cells_metric(cells, t)})" for t in tasks], "Avg."]
    if latex:
        header = [h.replace("_", r"\_") for h in header]
    rows = []
    for method in methods_of(cells):
        by_task = {c.task: c for c in cells if c.method == method}
        counts = {r.adapter_params for c in by_task.values() for r in c.runs}
        counts.discard(None)
        params = _params(counts.pop()) if len(counts) == 1 else ("varies" if counts else "–")
        means = [c.mean * unit(c, percent) for c in by_task.values()]
        digits = 1 if all(unit(c, percent) == 100 for c in by_task.values()) else 3
        average = f"{statistics.fmean(means):.{digits}f}" if len(by_task) == len(tasks) else "–"
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
        "s_per_step",
        "collapsed_seeds",
        "runs",
    ]
    rows = []
    for task in tasks_of(cells):
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
                    "" if cell.seconds_per_step is None else f"{cell.seconds_per_step:.3g}",
                    " ".join(str(r.seed) for r in cell.collapsed),
                    " ".join(str(r.path) for r in cell.runs),
                ]
            )
    return header, rows


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(cells: Sequence[Cell], percent: bool = True, left_out: Sequence = ()) -> str:
    """The paper-layout table, then the per-cell details (seeds, best epoch, parameters), the
    collapsed runs (footnote †) and the runs left out of the pooling."""
    header, rows = _paper_rows(cells, percent)
    detail_header, detail = _detail_rows(cells)
    detail = [row[:-1] for row in detail]  # run paths: CSV only
    scale = " (×100 for accuracy, F1, MCC and correlations)" if percent else ""
    text = (
        f"Best validation score per run, mean ± sd over seeds{scale}; # Params: adapter "
        "parameters without the task head.\n\n"
        + _markdown(header, rows)
        + "\n"
        + _markdown(detail_header[:-1], detail)
    )
    notes = collapse_notes(cells, percent)
    if notes:
        text += (
            f"\n† {COLLAPSED}: the run's best score stays at what always predicting the majority "
            "class scores (it learned nothing the baseline does not do); the mean includes it.\n"
        )
        text += "".join(f"- {line}\n" for line in notes)
    if left_out:
        text += (
            "\nLeft out (the same settings and seed as a run above: an identical rerun, or a "
            "killed run's part before its resume):\n"
        )
        text += "".join(f"- {r.path}\n" for r in left_out)
    return text


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
    if any(c.collapsed for c in cells):
        note = rf"$^\dagger$ {COLLAPSED}: best score at the majority-class baseline"
        lines += [r"\midrule", rf"\multicolumn{{{len(header)}}}{{l}}{{{note}}} \\"]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
