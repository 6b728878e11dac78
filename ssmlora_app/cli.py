"""The ``ssmlora`` command: LightningCLI (fit, validate, test, predict) over YAML configs."""

from __future__ import annotations

import sys
import warnings

from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ssmlora_app.adapters import AdapterConfig
from ssmlora_app.callbacks import ExportAdapter, FitSummary
from ssmlora_app.errors import SsmloraError
from ssmlora_app.module import AdapterModule
from ssmlora_app.tasks.datamodule import TaskDataModule

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "ssmlora"},
    },
}


def _tokenizer_of(backbone) -> str | None:
    return backbone.tokenizer or backbone.name_or_path


class SsmloraCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Callbacks every run has, each configurable in YAML under its own key.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(ExportAdapter, "export")
        parser.add_lightning_class_args(FitSummary, "summary")
        parser.link_arguments("model.backbone", "data.tokenizer", compute_fn=_tokenizer_of)
        parser.link_arguments("data.task_info", "model.task_info", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``ssmlora`` console script."""
    set_parsing_settings(subclasses_enabled=[AdapterConfig])
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        SsmloraCLI(
            AdapterModule,
            TaskDataModule,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            args=args,
        )
    except SsmloraError as err:
        print(f"ssmlora: error: {err}", file=sys.stderr)
        sys.exit(2)
