"""Write ``ssmlora predict``'s predictions to files, with label names.

For each predicted split: ``<task>_<split>.jsonl`` (one ``{"index", "prediction", "label"}`` object
per example, ``label`` being the gold label when the split has one) and a TSV in the GLUE
submission layout (``index<TAB>prediction``, files named as the GLUE server expects: ``SST-2.tsv``,
``MNLI-m.tsv``, ``MNLI-mm.tsv``, ...). Classes are written as the task's label names (``entailment``)
or class ids where the task has none (SST-2, CoLA, MRPC, QQP: ``0``/``1``), STS-B as a score; a
custom task's string labels come back as the original strings (``TaskInfo.label_names``).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import get_task

FORMATS = ("jsonl", "tsv")


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of ``ssmlora predict`` (the task's evaluation splits) to files."""

    def __init__(self, output_dir: str | None = None, formats: list[str] | None = None):
        """
        Args:
            output_dir: Folder for the files; default ``<log_dir>/predictions``.
            formats: Any of ``jsonl`` and ``tsv`` (GLUE submission layout); default both.
        """
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.formats = list(formats or FORMATS)
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise SsmloraError(f"predictions.formats: unknown {sorted(unknown)}; use jsonl, tsv.")

    def _label(self, task, value: float | int, names=None) -> str | float | int:
        if task.is_regression:
            return round(float(value), 4)
        names = names or getattr(task, "label_names", None)
        return names[int(value)] if names else int(value)

    def _tsv_name(self, task, split: str) -> str:
        folder = getattr(task, "folder", task.name)
        suffix = {"validation_matched": "-m", "validation_mismatched": "-mm"}.get(split, "")
        return f"{folder}{suffix}.tsv"

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: list,
        batch_indices: list,
    ) -> None:
        info = pl_module.task_info
        # The data module's task carries its task_args (a custom task's files and labels).
        task = getattr(getattr(trainer, "datamodule", None), "task", None) or get_task(info.task)
        names = info.label_names
        if predictions and isinstance(predictions[0], torch.Tensor):  # a single dataloader
            predictions = [predictions]
        if len(batch_indices) != len(predictions):  # Lightning nests them one level deeper
            batch_indices = [batch_indices]
        root = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir))
        if self.output_dir is None:
            root = root / "predictions"
        root.mkdir(parents=True, exist_ok=True)
        rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        datamodule = getattr(trainer, "datamodule", None)
        for split, preds, indices in zip(info.eval_splits, predictions, batch_indices):
            values = torch.cat([p.flatten().cpu() for p in preds]).tolist()
            order = _flatten(indices)
            rows = sorted(zip(order, values))
            gold = None
            dataset = getattr(datamodule, "splits", {}).get(split)
            if dataset is not None and "labels" in dataset.column_names:
                gold = dataset["labels"]
            if "jsonl" in self.formats:
                path = root / f"{info.task}_{split}{rank}.jsonl"
                with path.open("w") as f:
                    for index, value in rows:
                        record = {"index": index, "prediction": self._label(task, value, names)}
                        if gold is not None:
                            record["label"] = self._label(task, gold[index], names)
                        f.write(json.dumps(record) + "\n")
            if "tsv" in self.formats:
                name = self._tsv_name(task, split)
                path = root / (name.removesuffix(".tsv") + rank + ".tsv")
                lines = ["index\tprediction"]
                lines += [f"{index}\t{self._label(task, value, names)}" for index, value in rows]
                path.write_text("\n".join(lines) + "\n")


def _flatten(nested: list) -> list[int]:
    """Dataset indices in prediction order (Lightning nests them per batch, at varying depth)."""
    if isinstance(nested, int):
        return [nested]
    return [i for item in nested for i in _flatten(item)]
