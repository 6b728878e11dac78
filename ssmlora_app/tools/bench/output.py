"""``ssmlora bench``'s result and its outputs: the terminal table, the JSON file and the plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ssmlora_app.tools.bench.measure import Timing


@dataclass
class BenchResult:
    """Everything one bench run measured (the JSON file is ``asdict`` of this)."""

    preset: str
    device: str
    machine: str
    date: str
    command: str
    batch_size: int
    warmup: int
    repeats: int
    clock: str
    """``wall`` or ``cpu`` (see :data:`CLOCKS`)."""
    memory_method: str
    rows: list[dict] = field(default_factory=list)
    """One per (method, seq_len): times, peaks, trainable parameters, ratios to LoRA (and, for
    SSMLoRA's rows, ``*_vs_same``: to LoRA on exactly the same linears)."""
    scan_rows: list[dict] = field(default_factory=list)
    """One per (component, seq_len): the HRM scan alone (chunked, FFT, sequential) and a
    parameter-matched LoRA bypass, fwd + bwd."""
    fit_rows: list[dict] = field(default_factory=list)
    """``ssmlora fit`` end to end against the bare step (real-weights presets, :mod:`.fit`)."""
    exponents: dict[str, float | None] = field(default_factory=dict)
    """Fitted ``time ∝ L^p`` of each method's train step and of each scan component."""
    notes: list[str] = field(default_factory=list)


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def format_table(result: BenchResult) -> str:
    """The terminal table: one line per (seq_len, method), ratios to LoRA last."""
    lines = [
        f"ssmlora bench --preset {result.preset}: {result.device} ({result.machine}), "
        f"batch {result.batch_size}, {result.clock} clock, median of {result.repeats} "
        f"(warm-up {result.warmup}), "
        f"{result.date}",
        f"{'seq':>6} {'method':<26} {'params':>11} {'train s':>9} {'±%':>5} {'infer s':>9} "
        f"{'±%':>5} {'peak MiB':>9} {'train×':>7} {'infer×':>7} {'mem×':>6}",
    ]
    for r in result.rows:
        tr, inf = Timing(**r["train_s"]), Timing(**r["infer_s"])
        lines.append(
            f"{r['seq_len']:>6} {r['method']:<26} {r['trainable_params']:>11,} "
            f"{tr.median:>9.4f} {100 * tr.spread:>5.0f} {inf.median:>9.4f} "
            f"{100 * inf.spread:>5.0f} {_fmt(r['train_peak_mb'], '9.1f'):>9} "
            f"{_fmt(r['train_vs_lora'], '7.2f'):>7} {_fmt(r['infer_vs_lora'], '7.2f'):>7} "
            f"{_fmt(r['train_peak_vs_lora'], '6.2f'):>6}"
            + (
                f"  vs LoRA on the same linears {r['train_vs_same']:.2f} / "
                f"{r['infer_vs_same']:.2f} / {_fmt(r['train_peak_vs_same'], '.2f')}"
                if r.get("train_vs_same") is not None
                else ""
            )
        )
    if result.scan_rows:
        lines.append(
            f"scan alone (fwd+bwd, batch {result.scan_rows[0]['batch_size']}, "
            f"D={result.scan_rows[0]['d_model']}, d={result.scan_rows[0]['d_state']}):"
        )
        lines.append(
            f"{'seq':>6} {'component':<26} {'s':>9} {'±%':>5} {'×bypass':>8} {'÷fft':>7} "
            f"{'÷chunked':>8}"
        )
        for r in result.scan_rows:
            t = Timing(**r["fwd_bwd_s"])
            lines.append(
                f"{r['seq_len']:>6} {r['component']:<26} {t.median:>9.4f} "
                f"{100 * t.spread:>5.0f} {r['vs_lora_bypass']:>8.2f} "
                f"{_fmt(r['fft_speedup'], '7.1f'):>7} "
                f"{_fmt(r.get('chunked_speedup'), '8.1f'):>8}"
            )
    for r in result.fit_rows:
        fit, bare = Timing(**r["fit_step_s"]), Timing(**r["bare_step_s"])
        lines.append(
            f"ssmlora fit ({r['method']}, {r['task']}, batch {r['batch_size']} x "
            f"{r['mean_padded_length']:.0f} tokens, {r['steps']} steps after {r['warmup']}, "
            f"{r['rounds']} rounds): "
            f"{fit.median:.4f} s/step ({r['fit_steps_per_s']:.2f} steps/s) against the bare "
            f"step's {bare.median:.4f} s ({r['bare_steps_per_s']:.2f} steps/s): overhead "
            f"{100 * r['overhead']:+.1f}% (rounds "
            + ", ".join(f"{100 * o:+.1f}%" for o in r["overhead_per_round"])
            + f"); set-up before the first step {Timing(**r['setup_s']).median:.1f} s"
        )
    if result.exponents:
        fitted = ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in result.exponents.items())
        lines.append(f"fitted time ∝ L^p: {fitted}")
    lines += [f"note: {n}" for n in result.notes]
    lines.append(f"peak memory: {result.memory_method}")
    return "\n".join(lines)


def plot(result: BenchResult, path: Path) -> bool:
    """Train time, inference time and peak memory against sequence length (log-log), and the
    scan alone; written to ``path``. False (nothing written) without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    panels = [("train step (s)", "train_s"), ("inference (s)", "infer_s"), ("peak MiB", None)]
    n = len(panels) + bool(result.scan_rows)
    fig = Figure(figsize=(4.5 * n, 4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    methods = list(dict.fromkeys(r["method"] for r in result.rows))
    for ax, (title, key) in zip(axes, panels):
        for m in methods:
            rows = [r for r in result.rows if r["method"] == m]
            ys = [r[key]["median"] if key else r["train_peak_mb"] for r in rows]
            if all(y is not None for y in ys):
                ax.plot([r["seq_len"] for r in rows], ys, marker="o", label=m)
        ax.set(xscale="log", yscale="log", xlabel="sequence length", title=title)
    if result.scan_rows:
        ax = axes[-1]
        for comp in dict.fromkeys(r["component"] for r in result.scan_rows):
            rows = [r for r in result.scan_rows if r["component"] == comp]
            ax.plot(
                [r["seq_len"] for r in rows],
                [r["fwd_bwd_s"]["median"] for r in rows],
                marker="o",
                label=comp,
            )
        ax.set(xscale="log", yscale="log", xlabel="sequence length", title="scan alone (s)")
        ax.legend(fontsize=7)
    if methods:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"ssmlora bench {result.preset} — {result.device}, batch {result.batch_size}")
    fig.savefig(path, dpi=100)
    return True


def write_outputs(result: BenchResult, out_dir: Path) -> dict[str, Path]:
    """``bench_<preset>.json`` and ``bench_<preset>.png`` (when matplotlib is installed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    png = out_dir / f"bench_{result.preset}.png"
    if result.rows or result.scan_rows:
        if plot(result, png):
            paths["png"] = png
        else:
            result.notes.append("no plot: install the bench extra (pip install 'ssmlora[bench]')")
    paths["json"] = out_dir / f"bench_{result.preset}.json"
    paths["json"].write_text(json.dumps(asdict(result), indent=1) + "\n")
    return paths


def command_line(prog: str, arguments: dict) -> str:
    """``prog --name value …`` for the arguments that are set (recorded in the JSON and README)."""
    parts = [prog]
    for name, value in arguments.items():
        if value is None or name.startswith("_") or not isinstance(value, str | int | list):
            continue
        text = "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
        parts.append(f"--{name} {text}")
    return " ".join(parts)
