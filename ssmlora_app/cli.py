"""The ``ssmlora`` command: LightningCLI (fit, validate, test, predict) over YAML configs, the tools' subcommands (imported only when run) and the adapter methods' own."""

from __future__ import annotations

import importlib
import inspect
import os
import shutil
import sys
from argparse import SUPPRESS
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import auto_cli, set_parsing_settings
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ssmlora_app import preflight
from ssmlora_app.adapters import ADAPTERS, AdapterConfig
from ssmlora_app.backbone import expand_path
from ssmlora_app.callbacks import (
    SIGTERM_EXIT_CODE,
    AdapterDiagnostics,
    CheckpointOnSigterm,
    ExportAdapter,
    FitSummary,
    LRMonitor,
    NanGuard,
    ParameterSummary,
    PredictionWriter,
    RunCheckpoint,
    quiet_progress_bar,
)
from ssmlora_app.console import CliParser, ToolParser, silence_library_noise
from ssmlora_app.data import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.module import AdapterModule
from ssmlora_app.preflight_values import check_fit_values
from ssmlora_app.run import RunRecord, check_fits
from ssmlora_app.tasks import Task

LEGACY_KEYS = ("hrm_diagnostics", "ssmlora_diagnostics", "sdt_selection")
"""Callback keys of older versions, still found in runs' saved config.yaml: accepted and ignored
(their work is now done by ``diagnostics`` and the adapter methods' own callbacks)."""

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
    """``data.tokenizer`` from ``model.backbone`` (a Namespace here, not the dataclass)."""
    return expand_path(backbone.tokenizer or backbone.name_or_path)


def _tokenizer_gguf_of(backbone) -> str | None:
    """``data.tokenizer_gguf_file``: the backbone's GGUF file, unless a tokenizer is given."""
    return getattr(backbone, "gguf_file", None) if backbone.tokenizer is None else None


def _check_writable(folder: str | None) -> Path | None:
    """Fail before training, not at the first checkpoint, when the run folder can't be written;
    without creating it. Returns the top folder the run will create (None: it exists), which a
    refused command removes again while it holds no file (:func:`_remove_if_empty`)."""
    if not folder:
        return None
    path = Path(folder).expanduser()
    existing, top = path, None
    while not existing.exists():  # the deepest part that exists: what the logger creates under
        existing, top = existing.parent, existing
    if not existing.is_dir():
        raise SsmloraError(f"Cannot create the log folder {path}: {existing} is not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SsmloraError(
            f"The log folder {path} is not writable: choose another with "
            "--trainer.logger.init_args.save_dir or --trainer.default_root_dir."
        )
    return top


def _remove_if_empty(top: Path | None) -> None:
    """Remove ``top`` if it holds nothing but empty folders (made by a command that then stopped);
    a file in it, e.g. from another run meanwhile, keeps it."""
    if top is not None and top.is_dir() and not any(not p.is_dir() for p in top.rglob("*")):
        shutil.rmtree(top, ignore_errors=True)


class RunConfigSaver(SaveConfigCallback):
    """Lightning's config saver, silent where a command has no run folder to write into (an
    evaluation of a model outside a run: nothing is written to the current directory)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" or trainer.loggers:
            super().setup(trainer, pl_module, stage)


class SsmloraCLI(LightningCLI):
    """LightningCLI with the checks of :mod:`ssmlora_app.preflight` between parsing and any work,
    the run-folder placement, and the removal of a failed fit's empty run folder."""

    _checkpoint = None
    _placement = preflight.Placement(None)
    _new_folders: tuple[Path | None, ...] = ()  # the folders a refused run removes again

    def _parse_ckpt_path(self) -> None:
        """Replaces Lightning's reading of the checkpoint's hyperparameters (ours keep them apart,
        and Lightning's reader gives a traceback for a bad file): the one-line checks instead."""
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._checkpoint = preflight.resolve_ckpt_path(self.config[subcommand], subcommand)

    def instantiate_trainer(self, **kwargs):
        """Lightning checks accelerator/strategy/precision combinations here: report them as bad
        input (one line, before anything is loaded) rather than as a stack trace."""
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, ImportError) as err:
            # ImportError: an accelerator whose package is missing (tpu: torch_xla)
            raise SsmloraError(f"trainer settings: {err}") from None
        if self.subcommand == "fit":
            preflight.check_fsdp_devices(trainer)
        return trainer

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """The default progress bar without the logger's version (``v_num``), and a one-line
        parameter summary instead of Lightning's table (whose FLOPs column reads 0)."""
        given = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in given
        ):
            callbacks.append(quiet_progress_bar())
        if config.get("enable_model_summary") is not False and not any(
            isinstance(c, ModelSummary) for c in given
        ):
            callbacks.append(ParameterSummary())
        return super()._instantiate_trainer(config, callbacks)

    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        config = self.config.get(subcommand) if subcommand else self.config
        if config is None:
            return
        if subcommand in LIGHTNING_COMMANDS:
            preflight.check_init_adapter_from(config.model)
        if subcommand == "fit":
            preflight.check_trainer_limits(config.trainer)
            check_fit_values(config)
            preflight.check_optimizer(config.model)
            if self._checkpoint is not None:
                preflight.check_resume_trains(self._checkpoint, config.trainer)
            self._placement = preflight.place_fit(config, self._checkpoint)
        elif subcommand in LIGHTNING_COMMANDS:
            self._placement = preflight.place_evaluation(config, subcommand, self._checkpoint)
        trainer = config.get("trainer", {})
        logger = trainer.get("logger")
        loggers = logger if isinstance(logger, list) else [logger]
        new = []
        for item in loggers:
            init_args = getattr(item, "init_args", None) or {}
            new.append(_check_writable(getattr(init_args, "save_dir", None) if init_args else None))
        if subcommand == "fit" or self._placement.run is not None:
            new.append(_check_writable(trainer.get("default_root_dir")))
        self._new_folders = tuple(new)
        precision = config.get("float32_matmul_precision")
        if precision is not None:  # a process-wide torch setting; only CUDA reads it today
            torch.set_float32_matmul_precision(precision)

    def _check_model(self) -> None:
        """The instantiated model against the checkpoint (task, classes, backbone, adapter) and,
        for an evaluation, against the adapter folder it starts from."""
        model = self.model
        record = RunRecord(model.backbone_config, model.adapter_config, model.task_info)
        if self._checkpoint is not None:
            check_fits(self._checkpoint, record)
        elif self.subcommand != "fit" and model.init_adapter_from is not None:
            preflight.check_adapter_head(model)

    def before_fit(self) -> None:
        self._check_model()
        run = self._placement.run
        if not self.trainer.loggers and run is not None and not self._placement.resume:
            # No logger writes hparams.yaml: the run folder still records its run.
            run.hparams_path.parent.mkdir(parents=True, exist_ok=True)
            save_hparams_to_yaml(run.hparams_path, dict(self.model.hparams))

    def before_validate(self) -> None:
        self._check_model()

    def before_test(self) -> None:
        self._check_model()

    def before_predict(self) -> None:
        self._check_model()

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:
            raise
        except BaseException:
            if subcommand == "fit":
                preflight.remove_failed_run(self._placement)
            for top in self._new_folders:
                _remove_if_empty(top)
            raise

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Callbacks every run has, each configurable in YAML under its own key.
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(LRMonitor, "lr_monitor")
        parser.add_lightning_class_args(ExportAdapter, "export")
        parser.add_lightning_class_args(FitSummary, "summary")
        parser.add_lightning_class_args(AdapterDiagnostics, "diagnostics")
        parser.add_lightning_class_args(NanGuard, "nan_guard")
        parser.add_lightning_class_args(CheckpointOnSigterm, "sigterm_checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_argument(
            "--allow_untrained",
            type=bool,
            default=False,
            help="validate/test/predict without --ckpt_path or --model.init_adapter_from: "
            "evaluate the untrained adapter and head on purpose (refused otherwise).",
        )
        for key in LEGACY_KEYS:  # in the config.yaml of runs made before the adapter contract
            parser.add_argument(f"--{key}", type=dict | bool | None, default=None, help=SUPPRESS)
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
        parser.link_arguments(
            "model.backbone", "data.tokenizer_gguf_file", compute_fn=_tokenizer_gguf_of
        )
        parser.link_arguments("data.task_info", "model.task_info", apply_on="instantiate")


TOOLS = {
    "export": "ssmlora_app.tools.export:export",
    "import": "ssmlora_app.tools.export:import_adapter",
    "report": "ssmlora_app.tools.report:report",
    "sweep": "ssmlora_app.tools.sweep:sweep",
    "bench": "ssmlora_app.tools.bench:bench",
}
"""The tools' subcommands: name -> ``module:function``, imported only when that command runs (the
training path never imports ``ssmlora_app.tools``). Each is one typed function."""

LIGHTNING_COMMANDS = {
    "fit": "Train an adapter (and the task head) on a frozen backbone.",
    "validate": "Evaluate a model on the evaluation splits.",
    "test": "Evaluate a model on the test splits (the held-out ones where the task has them).",
    "predict": "Write predictions (and GLUE submission files) for the evaluation or test splits.",
}


def extra_commands() -> dict[str, Callable[[], Callable]]:
    """Every subcommand besides LightningCLI's: the tools' and the registered adapter methods'
    (HRM's ``reduce``), as loaders of their functions."""
    commands: dict[str, Callable[[], Callable]] = {
        name: partial(_import, target) for name, target in TOOLS.items()
    }
    for method in ADAPTERS.values():
        for name, function in method.commands.items():
            commands[name] = partial(lambda f: f, function)
    return commands


def _import(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _summary(function: Callable) -> str:
    """The first sentence (or clause) of a command's docstring, on one line."""
    paragraph = " ".join((inspect.getdoc(function) or "").split("\n\n", 1)[0].split())
    for end in (". ", ": ", " ("):
        paragraph = paragraph.split(end, 1)[0]
    return paragraph.rstrip(".")


def print_help() -> None:
    """``ssmlora --help``: every subcommand with one line each."""
    lines = ["usage: ssmlora <command> [options]   (ssmlora <command> --help: its options)", ""]
    lines.append("Training (YAML configs: ssmlora fit --config configs/quickstart.yaml):")
    lines += [f"  {name:<9} {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += ["", "Tools:"]
    lines += [f"  {name:<9} {_summary(_import(target))}" for name, target in TOOLS.items()]
    methods = [(n, m, f) for m in ADAPTERS.values() for n, f in m.commands.items()]
    if methods:
        lines += ["", "Adapter methods' commands:"]
        lines += [f"  {n:<9} ({m.name}) {_summary(f)}" for n, m, f in methods]
    print("\n".join(lines))


def _parsing_settings() -> None:
    """jsonargparse's settings for every command: adapter configs and tasks as subclasses, and
    the dataclasses' attribute docstrings as ``--help``."""
    set_parsing_settings(
        subclasses_enabled=[AdapterConfig, Task], docstring_parse_attribute_docstrings=True
    )


def build_cli(args: list[str] | None = None, run: bool = True) -> SsmloraCLI:
    """The LightningCLI of ``ssmlora fit|validate|test|predict`` (``run=False``: parse and
    instantiate the model and data without running, e.g. to inspect them)."""
    _parsing_settings()
    return SsmloraCLI(
        AdapterModule,
        TaskDataModule,
        auto_configure_optimizers=False,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True},
        parser_class=CliParser,
        parser_kwargs={"prog": "ssmlora"},
        trainer_defaults=TRAINER_DEFAULTS,
        args=args,  # None: Lightning reads sys.argv itself
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``ssmlora`` console script. Exit codes: 0 done, 2 bad input (one
    ``ssmlora: error:`` line), 143 stopped by SIGTERM after saving a checkpoint (requeue it)."""
    argv = sys.argv[1:] if args is None else list(args)
    _parsing_settings()
    silence_library_noise()
    if argv in ([], ["-h"], ["--help"]):
        print_help()
        sys.exit(0)
    try:
        commands = extra_commands()
        if argv[0] in commands:
            try:
                auto_cli(
                    commands[argv[0]](),
                    args=argv[1:],
                    as_positional=False,
                    parser_class=ToolParser,
                    prog=f"ssmlora {argv[0]}",
                )
            except SsmloraError as err:
                # The backbone's checks name fit's options (model.backbone.X); here it is --backbone.X.
                raise SsmloraError(str(err).replace("model.backbone.", "--backbone.")) from None
            return
        if argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
            known = ", ".join([*LIGHTNING_COMMANDS, *commands])
            raise SsmloraError(
                f"unknown command {argv[0]!r}; the commands: {known} (ssmlora --help)."
            )
        preflight.check_config_files(argv[1:])
        build_cli(argv)
    except SsmloraError as err:
        print(f"ssmlora: error: {err}", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException:
        sys.exit(SIGTERM_EXIT_CODE)
