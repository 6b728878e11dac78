"""The data module and its samplers: serving any task through its objective."""

from ssmlora_app.data.datamodule import TaskDataModule

__all__ = ["TaskDataModule"]
