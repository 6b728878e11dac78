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

Ratios to our LoRA are the headline numbers; :func:`fit_exponent` fits ``time ∝ L^p``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn

from ssmlora_app.adapters import HRMConfig, LoRAConfig, inject_adapters
from ssmlora_app.adapters.hrm import discretize
from ssmlora_app.adapters.inject import default_head
from ssmlora_app.adapters.registry import ADAPTERS
from ssmlora_app.adapters.ssmlora_presets import lora_baseline_modules, preset_modules
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.errors import SsmloraError
from ssmlora_app.linalg import thin_matmul
from ssmlora_app.ssm.scan import lti_scan

BASELINE = "lora"
"""The method every ratio is taken against."""


@dataclass(frozen=True)
class BenchPreset:
    """A backbone shape and the settings it is measured at."""

    backbone: Mapping[str, object]
    """Transformers config fields with ``model_type`` (random weights)."""
    seq_lens: tuple[int, ...]
    """Sequence lengths of the whole-model rows (GPU)."""
    batch_size: int
    """Batch size (GPU)."""
    cpu_seq_lens: tuple[int, ...]
    """Sequence lengths on CPU, where the long ones would take many minutes per step."""
    cpu_batch_size: int
    """Batch size on CPU."""
    lora_targets: tuple[str, ...]
    """``target_modules`` of our LoRA and of ``peft``'s LoRA."""
    methods: tuple[str, ...]
    """Methods measured (see :data:`METHODS`); unavailable ones are skipped with a note."""
    scan_seq_lens: tuple[int, ...] = ()
    """Sequence lengths of the scan-alone rows (empty: none)."""
    hrm_d_state: int = 16
    """HRM state size (16 ≈ the parameters of LoRA r=8 on query and value); also the rank of the
    parameter-matched LoRA bypass of the scan-alone rows."""
    requires_adapter: str | None = None
    """Skip the whole preset when this adapter is not in the registry."""


_ROBERTA_BASE = MappingProxyType(
    {
        "model_type": "roberta",
        "vocab_size": 50265,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
    }
)
_LLAMA_TINY = MappingProxyType(
    {
        "model_type": "llama",
        "vocab_size": 1000,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 16384,
        "pad_token_id": 0,
    }
)
_LLAMA_1B_LAYER = MappingProxyType(
    {  # one layer of Llama-3.2-1B's shapes; the vocabulary cut to keep RAM small
        "model_type": "llama",
        "vocab_size": 1000,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 1,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 16384,
        "pad_token_id": 0,
    }
)
_MAMBA_130M = MappingProxyType(
    {
        "model_type": "mamba",
        "vocab_size": 50280,
        "hidden_size": 768,
        "state_size": 16,
        "num_hidden_layers": 24,
        "pad_token_id": 0,
    }
)
_ALL = (
    "frozen",
    "full",
    "lora",
    "peft_lora",
    "ssmlora",
    "lora_full_model",
    "lora_attention_sparse",
    "hrm_fft",
    "hrm_sequential",
)

PRESETS: MappingProxyType[str, BenchPreset] = MappingProxyType(
    {
        "roberta-base": BenchPreset(
            backbone=_ROBERTA_BASE,
            seq_lens=(128, 512),
            batch_size=8,
            cpu_seq_lens=(128, 256),  # every method within ~5 CPU-minutes; 512 via --seq_lens
            cpu_batch_size=1,
            lora_targets=("query", "value"),
            methods=_ALL,
        ),
        "llama-tiny": BenchPreset(
            backbone=_LLAMA_TINY,
            seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
            batch_size=2,
            cpu_seq_lens=(512, 1024, 2048),
            cpu_batch_size=2,
            lora_targets=("q_proj", "v_proj"),
            methods=_ALL,
            scan_seq_lens=(512, 1024, 2048, 4096),
        ),
        "llama-1b-shapes": BenchPreset(
            backbone=_LLAMA_1B_LAYER,
            seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
            batch_size=1,
            cpu_seq_lens=(512, 1024),
            cpu_batch_size=1,
            lora_targets=("q_proj", "v_proj"),
            methods=("frozen", "lora", "hrm_fft", "hrm_chunked", "hrm_sequential"),
            scan_seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
            hrm_d_state=32,
        ),
        "mamba-130m": BenchPreset(
            backbone=_MAMBA_130M,
            seq_lens=(512, 2048),
            batch_size=4,
            cpu_seq_lens=(64, 128),  # transformers' reference selective scan: 30 s/step at 512
            cpu_batch_size=1,
            lora_targets=("in_proj", "out_proj"),
            methods=("frozen", "full", "lora", "peft_lora", "sdt"),
            requires_adapter="sdt",
        ),
    }
)
"""Named settings of ``ssmlora bench --preset``."""


# ---------------------------------------------------------------------------------------------
# Building the models


class Unavailable(Exception):
    """A method that cannot run here (adapter not in the registry, ``peft`` missing, …)."""


def _unfreeze_heads(model: nn.Module, heads: Sequence[nn.Module]) -> None:
    for head in heads:
        head.requires_grad_(True)


def _build_frozen(model: nn.Module, preset: BenchPreset) -> nn.Module:
    model.requires_grad_(False)
    _unfreeze_heads(model, [model.get_submodule(h) for h in default_head(model)])
    return model


def _build_full(model: nn.Module, preset: BenchPreset) -> nn.Module:
    return model.requires_grad_(True)


def _is_mamba(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in ("mamba", "mamba2")


def _build_lora(model: nn.Module, preset: BenchPreset) -> nn.Module:
    targets = [*preset.lora_targets]
    if _is_mamba(model):  # Mamba's kernels bypass wrappers: LoRA as a re-parametrisation
        config = ADAPTERS["sdt"].config_cls(
            r=8, alpha=16, target_modules=targets, sparse_targets=[]
        )
        return inject_adapters(model, config)
    return inject_adapters(model, LoRAConfig(r=8, alpha=16, target_modules=targets))


def _build_peft_lora(model: nn.Module, preset: BenchPreset) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise Unavailable("peft is not installed (pip install peft)") from None
    if _is_mamba(model):
        raise Unavailable("peft's LoRA wrappers are bypassed by Mamba's mixer (it reads .weight)")
    heads = [model.get_submodule(h) for h in default_head(model)]
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[*preset.lora_targets])
    wrapped = get_peft_model(model, config)
    _unfreeze_heads(model, heads)  # the same trained head as ours, without a modules_to_save copy
    return wrapped


def _build_lora_on(placement: str) -> Callable[[nn.Module, BenchPreset], nn.Module]:
    """LoRA r=8 on the linears SSMLoRA's ``full_model`` adapts (``same``), or on the paper's LoRA
    baseline for it (``paper``: q, k, v, o, FFN-in, FFN-out, head); the head learns through its
    adapters in both, as in SSMLoRA's ``full_model``. ``sparse_same``: on the linears of
    ``attention_sparse`` (alternating query/value), the head trained fully as there."""

    def build(model: nn.Module, preset: BenchPreset) -> nn.Module:
        if placement == "sparse_same":
            names = preset_modules(model, "attention_sparse")
            return inject_adapters(model, LoRAConfig(r=8, alpha=16, target_modules=names))
        if placement == "same":
            names = preset_modules(model, "full_model")
        else:
            names = lora_baseline_modules(model, "full_model")
        config = LoRAConfig(r=8, alpha=16, target_modules=names, modules_to_save=[])
        return inject_adapters(model, config)

    return build


def _build_hrm(scan: str) -> Callable[[nn.Module, BenchPreset], nn.Module]:
    def build(model: nn.Module, preset: BenchPreset) -> nn.Module:
        return inject_adapters(model, HRMConfig(d_state=preset.hrm_d_state, scan=scan))

    return build


def _build_registered(name: str, **fields) -> Callable[[nn.Module, BenchPreset], nn.Module]:
    def build(model: nn.Module, preset: BenchPreset) -> nn.Module:
        spec = ADAPTERS.get(name)
        if spec is None:
            raise Unavailable(f"adapter {name!r} is not in the registry of this checkout")
        return inject_adapters(model, spec.config_cls(**fields))

    return build


METHODS: MappingProxyType[str, tuple[Callable[[nn.Module, BenchPreset], nn.Module], ...]] = (
    MappingProxyType(
        {
            "frozen": (_build_frozen,),
            "full": (_build_full,),
            "lora": (_build_lora,),
            "peft_lora": (_build_peft_lora,),
            "hrm_fft": (_build_hrm("fft"),),
            "hrm_sequential": (_build_hrm("sequential"),),
            "hrm_chunked": (_build_hrm("chunked"),),
            "ssmlora": (
                _build_registered("ssmlora", preset="attention_sparse"),
                _build_registered("ssmlora", preset="full_model"),
            ),
            "lora_full_model": (_build_lora_on("same"), _build_lora_on("paper")),
            "lora_attention_sparse": (_build_lora_on("sparse_same"),),
            "sdt": (_build_registered("sdt"),),
        }
    )
)
"""Method name -> its builders (SSMLoRA has one row per insertion preset). ``frozen`` trains
only the task head (the floor of any adapter); ``full`` trains everything; ``lora_full_model``
is LoRA where SSMLoRA's ``full_model`` sits (``_same``: the cost of the state term alone) and
on the paper's LoRA baseline for it (``_paper``); ``lora_attention_sparse`` is LoRA where
``attention_sparse`` sits (its paper baseline is ``lora`` itself)."""

_ROW_NAMES = MappingProxyType(
    {
        "ssmlora": ("ssmlora_attention_sparse", "ssmlora_full_model"),
        "lora_full_model": ("lora_full_model_same", "lora_full_model_paper"),
        "lora_attention_sparse": ("lora_attention_sparse_same",),
    }
)

SAME_MODULES = MappingProxyType(
    {
        "ssmlora_full_model": "lora_full_model_same",
        "ssmlora_attention_sparse": "lora_attention_sparse_same",
    }
)
"""Row -> the LoRA row on exactly the same linears (``*_vs_same`` ratios: the state term's cost)."""


def row_names(method: str) -> tuple[str, ...]:
    """The result rows a method produces."""
    return _ROW_NAMES.get(method, (method,))


# ---------------------------------------------------------------------------------------------
# Measuring


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


@dataclass
class Runner:
    """One method's model, its optimizer, and its two measured calls."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    trainable: int

    def train_step(self, batch: dict[str, torch.Tensor]) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.model(**batch).loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, batch: dict[str, torch.Tensor]) -> None:
        self.model.eval()
        self.model(**{k: v for k, v in batch.items() if k != "labels"})


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
    """One per (method, seq_len): times, peaks, trainable parameters, ratios to LoRA."""
    scan_rows: list[dict] = field(default_factory=list)
    """One per (component, seq_len): the HRM scan alone and a LoRA bypass, fwd + bwd."""
    exponents: dict[str, float | None] = field(default_factory=dict)
    """Fitted ``time ∝ L^p`` of each method's train step and of each scan component."""
    notes: list[str] = field(default_factory=list)


def _machine(device: torch.device) -> str:
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


def build_runners(
    preset: BenchPreset, methods: Sequence[str], device: torch.device, notes: list[str]
) -> dict[str, Runner]:
    """One freshly built backbone per row (same seed), adapted, with AdamW on what trains."""
    backbone = BackboneConfig(config=dict(preset.backbone))
    runners = {}
    for method in methods:
        for row, build in zip(row_names(method), METHODS[method]):
            try:
                base = build_classifier(backbone, 2, "single_label_classification")
                model = build(base, preset).to(device)
            except (Unavailable, SsmloraError, ImportError, ValueError, KeyError) as err:
                notes.append(f"{row}: skipped ({err})")
                continue
            params = [p for p in model.parameters() if p.requires_grad]
            runners[row] = Runner(
                model, torch.optim.AdamW(params, lr=1e-4), sum(p.numel() for p in params)
            )
    return runners


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
        for key, value in (
            ("train_vs_lora", lambda r: r["train_s"]["median"]),
            ("infer_vs_lora", lambda r: r["infer_s"]["median"]),
            ("train_peak_vs_lora", lambda r: r["train_peak_mb"]),
        ):
            row[key] = _ratio(value(row), value(base)) if base else None
            same = by_name.get(SAME_MODULES.get(row["method"], ""))
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
    command: str = "",
    progress: Callable[[str], object] | None = None,
) -> BenchResult:
    """Measure ``preset`` (overrides as given); see the module docstring for what each number is."""
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
        machine=_machine(dev),
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
    chosen = list(methods or preset.methods)
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        raise SsmloraError(f"Unknown bench method(s) {unknown}; choose from {sorted(METHODS)}.")
    runners = build_runners(preset, chosen, dev, result.notes)
    if BASELINE not in runners:
        result.notes.append("no 'lora' row: ratios are left empty")
    vocab = preset.backbone.get("vocab_size", 1000)
    for seq_len in lengths:
        if progress:
            progress(f"measuring {', '.join(runners)} at seq_len {seq_len} ...")
        result.rows += measure_models(runners, seq_len, batch, vocab, warmup, repeats, dev, tick)
    del runners
    gc.collect()
    if scan_seq_lens is None:
        scan_seq_lens = preset.scan_seq_lens
    if scan_seq_lens:
        if progress:
            progress(f"measuring the scan alone at seq_len {list(scan_seq_lens)} ...")
        result.scan_rows = measure_scan(
            scan_seq_lens, preset.backbone["hidden_size"], preset.hrm_d_state, batch,
            warmup, repeats, dev, sequential_max_len, tick,
        )  # fmt: skip
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


# ---------------------------------------------------------------------------------------------
# Reporting


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
