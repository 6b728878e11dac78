"""Measuring adapters side by side: train-step time, inference time and peak memory.

Everything runs in one process on one backbone shape (built from a config, random weights) so
the methods share the machine's state; repeats are interleaved (A B C A B C …, the order rotated
each round) after warm-up, and each figure is the median over repeats with its min and max.

* **train step** = ``zero_grad`` + forward (with loss) + backward + ``AdamW.step`` over the
  method's trainable parameters; **inference** = forward under ``torch.no_grad`` in eval mode.
  On CUDA every timed region ends with ``torch.cuda.synchronize()``.
* **peak memory** = the largest extra memory a train step (or inference call) needs above what
  was held just before it (weights, optimizer state), i.e. activations, gradients, temporaries.
  On CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``memory_allocated`` before. On CPU (Linux): freed heap pages are returned to the OS
  (``malloc_trim``), the kernel's peak-RSS mark is reset to the current RSS (``echo 5 >
  /proc/self/clear_refs``), and the peak is ``VmHWM`` after the step minus ``VmRSS`` before it,
  so each configuration is measured on its own although all models live in the same process.
  Without ``/proc/self/clear_refs`` the CPU peak is reported as unavailable.
* **scan** rows time the HRM scan alone (``lti_scan`` forward + backward: chunked, FFT and
  sequential) next to a parameter-matched LoRA bypass (rank ``d``, the same width), so the
  scan's growth in ``L`` is visible without the attention's ``O(L²)``.

Ratios to our LoRA are the headline numbers; :func:`fit_exponent` fits ``time ∝ L^p``. The
real-weights presets (``minilm``, ``smollm2-135m``) load the backbone from the folders ``make
weights`` writes, and also time ``ssmlora fit`` end to end against the bare step (:mod:`.fit`).
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from ssmlora_app.adapters import ADAPTERS
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tools.bench.fit import measure_fit_overhead
from ssmlora_app.tools.bench.measure import (
    CLOCKS,
    Timing,
    cpu_peak_supported,
    fit_exponent,
    interleaved_times,
    machine_name,
    measure_models,
    measure_scan,
    peak_memory_mb,
)
from ssmlora_app.tools.bench.output import (
    BenchResult,
    command_line,
    format_table,
    plot,
    write_outputs,
)
from ssmlora_app.tools.bench.presets import BASELINE, PRESETS, BenchPreset, FitSettings
from ssmlora_app.tools.bench.rows import BASELINES, Runner, build_runners, plan_rows

__all__ = [
    "BASELINE",
    "BASELINES",
    "PRESETS",
    "BenchPreset",
    "BenchResult",
    "FitSettings",
    "Runner",
    "Timing",
    "bench",
    "fit_exponent",
    "format_table",
    "interleaved_times",
    "peak_memory_mb",
    "plan_rows",
    "plot",
    "run_bench",
    "write_outputs",
]


def run_bench(
    preset_name: str,
    preset: BenchPreset,
    *,
    methods: Sequence[str] | None = None,
    seq_lens: Sequence[int] | None = None,
    scan_seq_lens: Sequence[int] | None = None,
    batch_size: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    sequential_max_len: int = 4096,
    clock: str = "wall",
    weights: str | Path | None = None,
    fit_rounds: int | None = None,
    command: str = "",
    progress: Callable[[str], object] | None = None,
) -> BenchResult:
    """Measure ``preset`` (overrides as given); see the module docstring for what each number is.

    ``weights``: the folder of real weights (default :func:`default_weights`); ``fit_rounds``:
    rounds of the ``ssmlora fit`` measurement of a preset with ``fit`` (default ``repeats``;
    0 skips it)."""
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    if clock not in CLOCKS or (on_gpu and clock != "wall"):
        raise SsmloraError(f"clock must be 'wall' (any device) or 'cpu' (CPU only), got {clock!r}.")
    tick = CLOCKS[clock]
    batch = batch_size or (preset.batch_size if on_gpu else preset.cpu_batch_size)
    lengths = list(seq_lens or (preset.seq_lens if on_gpu else preset.cpu_seq_lens))
    memory = (
        "cuda max_memory_allocated - memory_allocated before"
        if on_gpu
        else "VmHWM - VmRSS before, after malloc_trim and clear_refs reset"
        if cpu_peak_supported()
        else "unavailable (no /proc/self/clear_refs)"
    )
    result = BenchResult(
        preset=preset_name,
        device=str(dev),
        machine=machine_name(dev),
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        batch_size=batch,
        warmup=warmup,
        repeats=repeats,
        clock=clock,
        memory_method=memory,
    )
    if preset.requires_adapter and preset.requires_adapter not in ADAPTERS:
        result.notes.append(
            f"preset {preset_name} skipped: adapter {preset.requires_adapter!r} is not in the "
            "registry of this checkout"
        )
        return result
    path = Path(weights or default_weights()).expanduser() / (preset.weights or "")
    if preset.weights and not real_weights_present(path):
        result.notes.append(
            f"preset {preset_name} skipped: no real weights in {path} (run `make weights`, or "
            "give their folder with --weights)"
        )
        return result
    backbone = (
        BackboneConfig(name_or_path=str(path))
        if preset.weights
        else BackboneConfig(config=dict(preset.backbone))
    )
    shape = json.loads((path / "config.json").read_text()) if preset.weights else preset.backbone
    chosen = list(methods or preset.methods)
    runners = build_runners(preset, backbone, chosen, dev, result.notes)
    if BASELINE not in runners:
        result.notes.append("no 'lora' row: ratios are left empty")
    vocab = shape.get("vocab_size", 1000)
    for seq_len in lengths:
        if progress:
            progress(f"measuring {', '.join(runners)} at seq_len {seq_len} ...")
        try:
            result.rows += measure_models(
                runners, seq_len, batch, vocab, warmup, repeats, dev, tick
            )
        except torch.OutOfMemoryError:
            skipped = [n for n in lengths if n >= seq_len]
            result.notes.append(out_of_memory_note("whole-model rows", skipped, batch, dev))
            free_memory(dev)
            break  # longer sequences need more memory still
    del runners
    gc.collect()
    if scan_seq_lens is None:
        scan_seq_lens = preset.scan_seq_lens
    if scan_seq_lens:
        if progress:
            progress(f"measuring the scan alone at seq_len {list(scan_seq_lens)} ...")
        for seq_len in scan_seq_lens:
            try:
                result.scan_rows += measure_scan(
                    [seq_len], shape["hidden_size"], preset.scan_d_state, batch,
                    warmup, repeats, dev, sequential_max_len, tick,
                )  # fmt: skip
            except torch.OutOfMemoryError:
                skipped = [n for n in scan_seq_lens if n >= seq_len]
                result.notes.append(out_of_memory_note("scan rows", skipped, batch, dev))
                free_memory(dev)
                break
    rounds = repeats if fit_rounds is None else fit_rounds
    if preset.fit is not None and preset.weights and rounds > 0:
        result.fit_rows.append(
            measure_fit_overhead(
                path, preset.fit, preset.lora_targets, rounds, dev, tick, progress=progress
            )
        )
    for name in dict.fromkeys(r["method"] for r in result.rows):
        rows = [r for r in result.rows if r["method"] == name]
        result.exponents[name] = fit_exponent(
            [r["seq_len"] for r in rows], [r["train_s"]["median"] for r in rows]
        )
    for name in dict.fromkeys(r["component"] for r in result.scan_rows):
        rows = [r for r in result.scan_rows if r["component"] == name]
        result.exponents[name] = fit_exponent(
            [r["seq_len"] for r in rows], [r["fwd_bwd_s"]["median"] for r in rows]
        )
    return result


def out_of_memory_note(what: str, lengths: Sequence[int], batch: int, device: torch.device) -> str:
    """The note a bench result carries for the lengths it could not measure."""
    return (
        f"{what} at seq_len {list(lengths)} not measured: out of memory on "
        f"{machine_name(device)} at batch {batch}"
    )


def free_memory(device: torch.device) -> None:
    """Drop what a failed measurement left allocated, so the next one starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def default_weights() -> str:
    """``$SSMLORA_WEIGHTS``, else ``~/.cache/ssmlora/weights`` (where ``make weights`` writes)."""
    return os.environ.get("SSMLORA_WEIGHTS", "~/.cache/ssmlora/weights")


def real_weights_present(folder: Path) -> bool:
    """A model folder with its config and safetensors weights."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def bench(
    preset: str = "llama-tiny",
    methods: list[str] | None = None,
    seq_lens: list[int] | None = None,
    scan_seq_lens: list[int] | None = None,
    batch_size: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
    device: str = "cpu",
    sequential_max_len: int = 4096,
    threads: int | None = None,
    clock: str = "wall",
    weights: str | None = None,
    fit_rounds: int | None = None,
    out: str = "runs/bench",
) -> None:
    """Measure train-step time, inference time and peak memory of adapters side by side, on a
    backbone built from a config (random weights, no hub) or on real weights; ratios to our LoRA
    are the headline.

    Args:
        preset: Backbone shape and settings: roberta-base, llama-tiny, llama-1b-shapes or
            mamba-130m (skipped when the SDT adapter is absent); minilm or smollm2-135m: the real
            pretrained weights of ``make weights`` (skipped without them), with ``ssmlora fit``
            timed end to end against the bare train step.
        methods: Baselines (frozen, full, peft_lora, lora_full_model: LoRA where SSMLoRA's
            full_model sits, and on the paper's baseline for it, lora_attention_sparse: LoRA
            where attention_sparse sits) and registered adapter methods
            (lora, ssmlora, hrm, sdt, ...: the rows of each method's bench hook), or single rows
            (hrm_fft); default: the preset's. Methods that cannot run on the preset's backbone
            are skipped with a note.
        seq_lens: Sequence lengths of the whole-model rows (default: the preset's, shorter on CPU).
        scan_seq_lens: Sequence lengths of the HRM-scan-alone rows (default: the preset's; [] none).
        batch_size: Batch size (default: the preset's, smaller on CPU).
        warmup: Untimed rounds before timing.
        repeats: Timed rounds, interleaved over the methods; the median is reported.
        device: cpu or cuda (cuda synchronises around every timed call).
        sequential_max_len: Longest sequence the slow sequential scan is timed at (scan rows).
        threads: CPU threads for torch (default: torch's). On a CPU shared with other jobs use 1:
            OpenMP threads that wait for a busy core make every op many times slower.
        clock: wall (elapsed time) or cpu (the process's CPU time, CPU only): on a shared CPU,
            cpu leaves out the time spent waiting for a core; use it with --threads 1.
        weights: Folder of the real weights (``make weights``) for minilm and smollm2-135m
            (default: $SSMLORA_WEIGHTS, else ~/.cache/ssmlora/weights).
        fit_rounds: Rounds of the ``ssmlora fit`` against bare-step measurement of the
            real-weights presets (default: repeats; 0: none).
        out: Folder for bench_<preset>.json and bench_<preset>.png.
    """
    if preset not in PRESETS:
        raise SsmloraError(f"Unknown bench preset {preset!r}; choose from {sorted(PRESETS)}.")
    if warmup < 0 or repeats < 1:
        raise SsmloraError(f"Need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}.")
    if fit_rounds is not None and fit_rounds < 0:
        raise SsmloraError(f"--fit_rounds must be >= 0, got {fit_rounds}.")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise SsmloraError(f"--device must be cpu or cuda (cuda:N), got {device!r}.")
    if any(n < 1 for n in [*(seq_lens or []), *(scan_seq_lens or [])]):
        raise SsmloraError(
            f"--seq_lens and --scan_seq_lens must be at least 1, got {seq_lens} and {scan_seq_lens}."
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SsmloraError("--device cuda asked for, but torch sees no CUDA device; use cpu.")
    if threads is not None:
        if threads < 1:
            raise SsmloraError(f"--threads must be at least 1, got {threads}.")
        torch.set_num_threads(threads)
    result = run_bench(
        preset,
        PRESETS[preset],
        methods=methods,
        seq_lens=seq_lens,
        scan_seq_lens=scan_seq_lens,
        batch_size=batch_size,
        warmup=warmup,
        repeats=repeats,
        device=device,
        sequential_max_len=sequential_max_len,
        clock=clock,
        weights=weights,
        fit_rounds=fit_rounds,
        command=command_line("ssmlora bench", locals()),
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    paths = write_outputs(result, Path(out))
    print(format_table(result))
    print("Written: " + ", ".join(str(p) for p in paths.values()))
