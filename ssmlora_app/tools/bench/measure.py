"""Timing and peak memory, side by side: interleaved repeats after warm-up, the median with its
spread; the whole-model rows and the HRM scan alone next to a LoRA bypass."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import torch

from ssmlora_app.adapters.hrm_layers import discretize
from ssmlora_app.linalg import thin_matmul
from ssmlora_app.ssm.scan import lti_scan
from ssmlora_app.tools.bench.presets import BASELINE
from ssmlora_app.tools.bench.rows import SAME_MODULES, Runner


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _malloc_trim() -> None:
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
        if trim is not None:
            trim(0)


def cpu_peak_supported() -> bool:
    """Whether this process can reset and read its peak RSS (Linux ``clear_refs`` + ``VmHWM``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_kb("VmHWM")
    except OSError:
        return False
    return True


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Extra memory (MiB) ``fn`` needs above what is held before it (see the module docstring);
    None where it cannot be measured."""
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not cpu_peak_supported():
        return None
    _malloc_trim()
    before = _proc_status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    fn()
    return max(0, _proc_status_kb("VmHWM") - before) / 1024


@dataclass
class Timing:
    """Seconds per call over the timed repeats."""

    median: float
    min: float
    max: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        return cls(statistics.median(samples), min(samples), max(samples), samples)

    @property
    def spread(self) -> float:
        """``(max − min) / median``."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0


CLOCKS: MappingProxyType[str, Callable[[], float]] = MappingProxyType(
    {"wall": time.perf_counter, "cpu": time.process_time}
)
"""``wall``: elapsed time (GPU, or a CPU of one's own). ``cpu``: this process's CPU time (user +
system, all threads): on a CPU shared with other jobs it leaves out the time spent waiting for a
core, which otherwise dominates the noise; with one thread it equals wall time on an idle CPU."""


def interleaved_times(
    calls: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time each call ``repeats`` times, interleaved (A B C, B C A, …) after ``warmup`` rounds."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            start = clock()
            calls[name]()
            _sync(device)
            samples[name].append(clock() - start)
    return {name: Timing.of(s) for name, s in samples.items()}


def fit_exponent(lengths: Sequence[float], times: Sequence[float]) -> float | None:
    """Least-squares slope ``p`` of ``log t = c + p log L`` (None with fewer than two lengths).

    ``O(L)`` gives ``p ≈ 1``, ``O(L log L)`` slightly above 1 (≈1.1 from 512 to 16k),
    ``O(L²)`` gives 2.
    """
    pts = [(math.log(x), math.log(y)) for x, y in zip(lengths, times) if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in pts)
    my = statistics.fmean(y for _, y in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _batch(vocab: int, batch_size: int, seq_len: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(seq_len)
    ids = torch.randint(3, vocab, (batch_size, seq_len), generator=gen)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": torch.randint(0, 2, (batch_size,), generator=gen).to(device),
    }


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def measure_models(
    runners: dict[str, Runner],
    seq_len: int,
    batch_size: int,
    vocab: int,
    warmup: int,
    repeats: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """Whole-model rows at one sequence length: interleaved times, then one peak per row."""
    batch = _batch(vocab, batch_size, seq_len, device)
    train = interleaved_times(
        {n: (lambda r=r: r.train_step(batch)) for n, r in runners.items()},
        warmup,
        repeats,
        device,
        clock,
    )
    infer = interleaved_times(
        {n: (lambda r=r: r.infer(batch)) for n, r in runners.items()},
        warmup,
        repeats,
        device,
        clock,
    )
    rows = []
    for name, runner in runners.items():
        rows.append(
            {
                "method": name,
                "seq_len": seq_len,
                "batch_size": batch_size,
                "trainable_params": runner.trainable,
                "train_s": asdict(train[name]),
                "infer_s": asdict(infer[name]),
                "train_peak_mb": peak_memory_mb(lambda r=runner: r.train_step(batch), device),
                "infer_peak_mb": peak_memory_mb(lambda r=runner: r.infer(batch), device),
            }
        )
    by_name = {r["method"]: r for r in rows}
    base = by_name.get(BASELINE)
    for row in rows:
        same = by_name.get(SAME_MODULES.get(row["method"], ""))
        for key, value in (
            ("train_vs_lora", lambda r: r["train_s"]["median"]),
            ("infer_vs_lora", lambda r: r["infer_s"]["median"]),
            ("train_peak_vs_lora", lambda r: r["train_peak_mb"]),
        ):
            row[key] = _ratio(value(row), value(base)) if base else None
            row[key.replace("_lora", "_same")] = _ratio(value(row), value(same)) if same else None
    return rows


def measure_scan(
    seq_lens: Sequence[int],
    d_model: int,
    d_state: int,
    batch_size: int,
    warmup: int,
    repeats: int,
    device: torch.device,
    sequential_max_len: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """The HRM scan alone (``discretize`` + ``lti_scan``, fwd + bwd of ``y.sum()``) with the
    chunked, FFT and sequential scans, next to a parameter-matched LoRA bypass ``(x A) B`` of
    rank ``d_state`` (``2·d·D`` parameters against HRM's ``2·d·D + 2d + 1``); ``u (B, L, D)``
    needs grad as inside a network. The sequential scan is timed up to ``sequential_max_len``."""
    gen = torch.Generator().manual_seed(0)
    log_A = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).to(device)
    log_dt = torch.full((d_state,), -3.0, device=device)
    B = (torch.randn(d_state, d_model, generator=gen) / d_model**0.5).to(device)
    C = (torch.randn(d_model, d_state, generator=gen) / d_state**0.5).to(device)
    lora_A = (torch.randn(d_state, d_model, generator=gen) / d_model**0.5).to(device)
    lora_B = (torch.randn(d_model, d_state, generator=gen) * 0.01).to(device)
    params = [log_A, log_dt, B, C, lora_A, lora_B]
    for p in params:
        p.requires_grad_(True)

    def scan(u: torch.Tensor, method: str) -> None:
        A_bar, B_bar = discretize(log_A, log_dt, B)
        lti_scan(u, A_bar, B_bar, C, method=method)[0].sum().backward()

    def bypass(u: torch.Tensor) -> None:
        thin_matmul(u @ lora_A.T, lora_B.T).sum().backward()  # as LoRALinear computes it

    rows = []
    for seq_len in seq_lens:
        u = torch.randn(batch_size, seq_len, d_model, generator=gen).to(device).requires_grad_()
        calls = {
            "scan_fft": lambda u=u: scan(u, "fft"),
            "scan_chunked": lambda u=u: scan(u, "chunked"),
            "lora_bypass": lambda u=u: bypass(u),
        }
        if seq_len <= sequential_max_len:
            calls["scan_sequential"] = lambda u=u: scan(u, "sequential")
        times = interleaved_times(calls, warmup, repeats, device, clock)
        for name, timing in times.items():
            rows.append(
                {
                    "component": name,
                    "seq_len": seq_len,
                    "batch_size": batch_size,
                    "d_model": d_model,
                    "d_state": d_state,
                    "fwd_bwd_s": asdict(timing),
                    "vs_lora_bypass": timing.median / times["lora_bypass"].median,
                    "fft_speedup": (
                        timing.median / times["scan_fft"].median
                        if name == "scan_sequential"
                        else None
                    ),
                    "chunked_speedup": (
                        timing.median / times["scan_chunked"].median
                        if name == "scan_sequential"
                        else None
                    ),
                }
            )
        for p in [*params, u]:
            p.grad = None
    return rows
