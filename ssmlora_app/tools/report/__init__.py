"""``ssmlora report``: a results table (and plots) from the TensorBoard logs of many runs.

Every folder under the given roots that holds ``events.out.tfevents.*`` and ``hparams.yaml`` is a
run (``runs/<name>/version_N``). From each: the task and its headline metric (``task_info``, e.g.
``val/mcc`` for CoLA, ``val_matched/accuracy`` for MNLI), the adapter config, the parameter
counts, the seed (``seed_everything`` in ``config.yaml``) and the validation curve. A run's score is
its best validation value over the evaluations (the papers' GLUE protocol); runs of one task whose
settings agree on everything but the seed and the logging keys are the seeds of one cell, reported
as mean ± sample standard deviation (one run per seed: identical reruns and a killed run's part
before its resume count once; see :mod:`.results`). A run whose best score stays at the
majority-class baseline is marked collapsed, with a footnote.

The main table follows the GLUE tables of the LoRA/adapter papers: one row per method with its
number of adapter parameters (head excluded), one column per task, and the average. A task's
other evaluation splits (state tracking's 2T and 4T lengths, MNLI mismatched) get a column each,
``<task> <split>``, holding their value at the step where the headline split was best (the same
checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssmlora_app.errors import SsmloraError
from ssmlora_app.outputs import check_output_dir
from ssmlora_app.run import RunFolder
from ssmlora_app.tools.report.plots import plot_curves, plot_params
from ssmlora_app.tools.report.results import (
    Cell,
    RunResult,
    align_versions,
    group,
    pool,
    read_run,
)
from ssmlora_app.tools.report.tables import csv_text, latex, markdown

__all__ = ["Cell", "RunResult", "build_report", "read_run", "report"]


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
    check_output_dir(out, "--out", overwrite=None)
    results = [r for r in map(read_run, RunFolder.find(roots)) if r is not None]
    align_versions(results)
    results, left_out = pool(results)
    if not results:
        raise SsmloraError(
            f"No finished runs under {', '.join(map(str, roots))}: expected folders with "
            "TensorBoard events, hparams.yaml and at least one validation."
        )
    cells = group(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    writers = {
        "md": lambda: markdown(cells, percent, left_out),
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
