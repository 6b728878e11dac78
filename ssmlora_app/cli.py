"""The ``ssmlora`` command: LightningCLI (fit, validate, test, predict) over YAML configs."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import auto_cli, set_parsing_settings
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ssmlora_app.adapters import AdapterConfig
from ssmlora_app.callbacks import (
    CheckpointOnSigterm,
    ExportAdapter,
    FitSummary,
    HRMDiagnostics,
    LRMonitor,
    NanGuard,
    PredictionWriter,
    SDTSelection,
    SSMLoRADiagnostics,
)
from ssmlora_app.errors import SsmloraError
from ssmlora_app.export import export, import_adapter
from ssmlora_app.module import AdapterModule
from ssmlora_app.report import report
from ssmlora_app.tasks.datamodule import TaskDataModule

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "ssmlora"},
    },
    "plugins": [{"class_path": "ssmlora_app.checkpoint_io.AtomicCheckpointIO"}],
    # The data module shards data itself (tasks/samplers.py): the same global batches for any
    # number of processes, and evaluation without Lightning's duplicated padding examples.
    "use_distributed_sampler": False,
}


def _tokenizer_of(backbone) -> str | None:
    return backbone.tokenizer or backbone.name_or_path


def _check_writable(folder: str | None) -> None:
    """Fail before training, not at the first checkpoint, when the run folder can't be written."""
    if not folder:
        return
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SsmloraError(f"Cannot create the log folder {path}: {err.strerror}.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SsmloraError(
            f"The log folder {path} is not writable: choose another with "
            "--trainer.logger.init_args.save_dir or --trainer.default_root_dir."
        )


class SsmloraCLI(LightningCLI):
    def instantiate_trainer(self, **kwargs):
        """Lightning checks accelerator/strategy/precision combinations here: report them as bad
        input (one line, before anything is loaded) rather than as a stack trace."""
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:
            raise SsmloraError(f"trainer settings: {err}") from None

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is None:
            return
        trainer = config.get("trainer", {})
        logger = trainer.get("logger")
        loggers = logger if isinstance(logger, list) else [logger]
        for item in loggers:
            init_args = getattr(item, "init_args", None) or {}
            _check_writable(getattr(init_args, "save_dir", None) if init_args else None)
        _check_writable(trainer.get("default_root_dir"))
        precision = config.get("float32_matmul_precision")
        if precision is not None:  # a process-wide torch setting; only CUDA reads it today
            torch.set_float32_matmul_precision(precision)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Callbacks every run has, each configurable in YAML under its own key.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(LRMonitor, "lr_monitor")
        parser.add_lightning_class_args(ExportAdapter, "export")
        parser.add_lightning_class_args(FitSummary, "summary")
        parser.add_lightning_class_args(HRMDiagnostics, "hrm_diagnostics")
        parser.add_lightning_class_args(SSMLoRADiagnostics, "ssmlora_diagnostics")
        parser.add_lightning_class_args(NanGuard, "nan_guard")
        parser.add_lightning_class_args(CheckpointOnSigterm, "sigterm_checkpoint")
        parser.add_lightning_class_args(SDTSelection, "sdt_selection")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_argument(
            "--float32_matmul_precision",
            type=Literal["highest", "high", "medium"] | None,
            default="high",
            help="Internal precision of fp32 matrix products (torch.set_float32_matmul_precision): "
            "high lets CUDA GPUs with tensor cores use TF32 for fp32 weights and activations "
            "(the frozen backbone under 32-true, the adapters' fp32 parts); highest keeps full "
            "fp32; null leaves torch's setting alone. CPUs compute in full fp32 either way.",
        )
        parser.link_arguments("model.backbone", "data.tokenizer", compute_fn=_tokenizer_of)
        parser.link_arguments("data.task_info", "model.task_info", apply_on="instantiate")


def reduce(adapter: str, out: str, eps: float = 0.1, train: str = "all") -> None:
    """Balanced truncation of a trained HRM adapter (spec §4.3): Hankel singular values, order
    from eps, complex modes so the reduced adapter still runs through the FFT scan.

    Args:
        adapter: Folder of a trained HRM adapter (as written by fit's export).
        out: Folder for the reduced adapter, hankel_singular_values.json and reduction_report.json.
        eps: Keep the states whose Hankel singular value is at least eps times the largest.
        train: What a later fit from the reduced adapter trains: ``all`` or ``gate`` (only the
            gates; use it with ``--model.adapter null --model.init_adapter_from OUT``).
    """
    from ssmlora_app.adapters.hrm_reduce import reduce_hrm_adapter

    if train not in ("all", "gate"):
        raise SsmloraError(f"--train must be 'all' or 'gate', got {train!r}.")
    report = reduce_hrm_adapter(adapter, eps, out)
    config_path = Path(out) / "adapter_config.json"
    meta = json.loads(config_path.read_text())
    meta["ssmlora"]["config"]["train"] = train
    config_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(report.summary())
    print(f"Reduced adapter written to {out}")


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
    out: str = "runs/bench",
) -> None:
    """Measure train-step time, inference time and peak memory of adapters side by side, on a
    backbone built from a config (random weights, no hub); ratios to our LoRA are the headline.

    Args:
        preset: Backbone shape and settings: roberta-base, llama-tiny, llama-1b-shapes or
            mamba-130m (skipped when the SDT adapter is absent).
        methods: Subset of frozen, full, lora, peft_lora, ssmlora, lora_full_model (LoRA where
            SSMLoRA's full_model sits, and on the paper's baseline for it),
            lora_attention_sparse (LoRA where attention_sparse sits), hrm_fft, hrm_chunked,
            hrm_sequential, sdt (default: the preset's). Methods that cannot run on the preset's
            backbone are skipped with a note.
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
        out: Folder for bench_<preset>.json and bench_<preset>.png.
    """
    import torch

    from ssmlora_app.bench import PRESETS, command_line, format_table, run_bench, write_outputs

    if preset not in PRESETS:
        raise SsmloraError(f"Unknown bench preset {preset!r}; choose from {sorted(PRESETS)}.")
    if warmup < 0 or repeats < 1:
        raise SsmloraError(f"Need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}.")
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
        command=command_line("ssmlora bench", locals()),
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    paths = write_outputs(result, Path(out))
    print(format_table(result))
    print("Written: " + ", ".join(str(p) for p in paths.values()))


def sweep(
    configs: list[str],
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (a jsonargparse default, never mutated)
    adapters: list[str] | None = None,
    runs: str = "runs/sweep",
    overrides: list[str] | None = None,
    dry_run: bool = False,
) -> None:
    """Fit every config x adapter x seed into one runs folder, one run after another (or print the
    commands for a cluster scheduler); then ``ssmlora report --runs RUNS``.

    Args:
        configs: Config files (e.g. ``[configs/roberta_sst2_lora.yaml, configs/roberta_rte_lora.yaml]``).
        seeds: Seeds (``seed_everything``) of each cell.
        adapters: Adapter names (lora, ssmlora, hrm, sdt) replacing each config's adapter with its
            default config; null keeps the configs' own adapters.
        runs: Runs folder; each run logs to ``RUNS/<config>[_<adapter>]/seed<seed>``.
        overrides: Extra arguments for every run (e.g. ``["--trainer.max_epochs=3"]``).
        dry_run: Print the commands, one per line, instead of running them.
    """
    from ssmlora_app.sweep import run_sweep, sweep_commands

    commands = sweep_commands(configs, seeds, adapters, runs, overrides or [])
    failed = run_sweep(commands, dry_run)
    if failed:
        raise SsmloraError(f"sweep: {failed} of {len(commands)} runs failed (see above).")


EXTRA_COMMANDS = {
    "reduce": reduce,
    "export": export,
    "import": import_adapter,
    "report": report,
    "bench": bench,
    "sweep": sweep,
}
"""Subcommands besides LightningCLI's fit/validate/test/predict: one typed function each."""


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``ssmlora`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    set_parsing_settings(subclasses_enabled=[AdapterConfig])
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            auto_cli(
                EXTRA_COMMANDS[argv[0]],
                args=argv[1:],
                as_positional=False,
                prog=f"ssmlora {argv[0]}",
            )
            return
        SsmloraCLI(
            AdapterModule,
            TaskDataModule,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            args=None if args is None else argv,  # None: Lightning reads sys.argv itself
        )
    except SsmloraError as err:
        print(f"ssmlora: error: {err}", file=sys.stderr)
        sys.exit(2)
