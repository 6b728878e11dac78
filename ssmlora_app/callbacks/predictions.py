"""Write ``ssmlora predict``'s predictions to files, with label names.

For each predicted split: ``<task>_<split>.jsonl`` (one ``{"index", "prediction", "label"}`` object
per example, ``label`` being the gold label when the split has one) and a TSV in the GLUE
submission layout (``index<TAB>prediction``; see :meth:`PredictionWriter._tsv_name` for the file
names: GLUE's server names are kept for its test splits). Classes are
written as the task's label names (``entailment``) or class ids where the task has none (SST-2,
CoLA, MRPC, QQP: ``0``/``1``), STS-B as a score; a custom task's string labels come back as the
original strings (``TaskInfo.label_names``).

GLUE's unlabelled test splits (``data.predict_splits: test``) give the benchmark submission: the
TSVs ``CoLA.tsv``, ``SST-2.tsv``, ..., ``MNLI-m.tsv``, ``MNLI-mm.tsv`` and ``AX.tsv`` (the
diagnostic set, MNLI model), whose ``index`` is each row's own index in the test file (the hub's
``idx``), which the GLUE server matches on; rows are in that index's order, and the jsonl records
(``<task>_test.jsonl``, ``mnli_test_matched.jsonl``, ...) have no ``label``.

Causal LM: under ``choice`` the prediction and the label are option indices; otherwise the
prediction is the model's greedy answer as text and the label the reference answer (the first of
the task's references, with ``references`` listing them all when there are several; the decoded
target tokens for tasks without references). In the TSV a text's backslashes, tabs and line breaks
are written as ``\\\\``, ``\\t``, ``\\n``, ``\\r``, so every example stays on one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import get_task
from ssmlora_app.tasks.base import INDEX_COLUMN
from ssmlora_app.tasks.glue import AX_SPLIT
from ssmlora_app.tasks.lm import generation_prompt

FORMATS = ("jsonl", "tsv")
TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
"""What a text prediction's special characters become in the TSV (one line per example)."""


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of ``ssmlora predict`` (the data module's ``predict_split_names``:
    the evaluation splits, or the test splits under ``data.predict_splits: test``) to files."""

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
        """GLUE's submission names (``SST-2.tsv``, ``MNLI-m.tsv``, ``AX.tsv``) for its unlabelled
        test splits only, so dev predictions never pass for (or overwrite) a submission file: GLUE
        dev splits are ``<folder>_<split>.tsv`` (``SST-2_validation.tsv``). Other tasks: ``<name>.tsv``
        for ``validation``, ``<name>_<split>.tsv`` for the rest."""
        if split == AX_SPLIT:
            return "AX.tsv"
        folder = getattr(task, "folder", task.name)
        if hasattr(task, "submission_splits"):  # GLUE: the test splits are the submission
            suffixes = {"test": "", "test_matched": "-m", "test_mismatched": "-mm"}
        else:
            suffixes = {"validation": ""}
        return f"{folder}{suffixes.get(split, f'_{split}')}.tsv"

    def _records(self, task, info, values: list, order: list[int], dataset, tokenizer) -> list:
        """One ``{"index", "prediction"[, "label"[, "references"]]}`` dict per example, in dataset
        order. ``values``: the predictions in ``order`` (class ids, scores, option indices or
        texts); ``dataset``: the split as the data module prepared it (None: no labels). An
        unlabelled split (:data:`INDEX_COLUMN`) is indexed by that column, sorted, without
        labels."""
        rows = sorted(zip(order, values, strict=True), key=lambda pair: pair[0])
        columns = dataset.column_names if dataset is not None else []
        if INDEX_COLUMN in columns:
            ids = dataset[INDEX_COLUMN]
            records = [
                {"index": int(ids[i]), "prediction": self._label(task, v, info.label_names)}
                for i, v in rows
            ]
            return sorted(records, key=lambda record: record["index"])
        classification = info.objective != "causal_lm"
        if classification or info.lm_eval == "choice":  # class ids / option indices
            column = "labels" if classification else "label"

            def fmt(value):
                return self._label(task, value, info.label_names) if classification else int(value)

            records = [{"index": i, "prediction": fmt(v)} for i, v in rows]
            if column in columns:
                gold = list(dataset[column])
                for record in records:
                    record["label"] = fmt(gold[record["index"]])
            return records
        records = [{"index": i, "prediction": v} for i, v in rows]
        if "references" in columns:
            references = list(dataset["references"])
            for record in records:
                i = record["index"]
                record.update(_reference(references[i], lambda i=i: dataset[i], tokenizer))
        return records

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: list,
        batch_indices: list,
    ) -> None:
        info = pl_module.task_info
        datamodule = getattr(trainer, "datamodule", None)
        # The data module's task carries its task_args (a custom task's files and labels).
        task = getattr(datamodule, "task", None) or get_task(info.task)
        tokenizer = getattr(datamodule, "tokenizer", None)
        names = getattr(datamodule, "predict_split_names", None)
        splits = names() if names is not None else list(info.eval_splits)
        if len(splits) == 1:  # Lightning unnests a single dataloader's predictions
            predictions = [predictions]
        if len(batch_indices) != len(predictions):  # and nests the indices one level deeper
            batch_indices = [batch_indices]
        root = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir))
        if self.output_dir is None:
            root = root / "predictions"
        root.mkdir(parents=True, exist_ok=True)
        rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        for split, preds, indices in zip(splits, predictions, batch_indices):
            dataset = getattr(datamodule, "splits", {}).get(split)
            records = self._records(
                task, info, _values(preds), _flatten(indices), dataset, tokenizer
            )
            if "jsonl" in self.formats:
                path = root / f"{info.task}_{split}{rank}.jsonl"
                with path.open("w", encoding="utf-8") as f:
                    for record in records:
                        f.write(json.dumps(record) + "\n")
            if "tsv" in self.formats:
                name = self._tsv_name(task, split)
                path = root / (name.removesuffix(".tsv") + rank + ".tsv")
                lines = ["index\tprediction"]
                lines += [f"{r['index']}\t{_tsv_cell(r['prediction'])}" for r in records]
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _values(batches: list) -> list:
    """One prediction per example, in prediction order: each batch is a tensor (class ids,
    scores, option indices) or a list of strings (generated answers)."""
    out: list = []
    for batch in batches:
        out += batch.flatten().cpu().tolist() if isinstance(batch, torch.Tensor) else list(batch)
    return out


def _reference(references: list[str], row, tokenizer) -> dict:
    """The reference answer of a causal-LM example: ``label`` is the first of its
    ``references``, ``references`` all of them when there are several; without references, the
    target tokens after the generation prompt (of ``row()``, see :mod:`ssmlora_app.tasks.lm`),
    decoded."""
    if len(references) > 1:
        return {"label": references[0], "references": list(references)}
    if references:
        return {"label": references[0]}
    if tokenizer is None:
        return {}
    example = row()
    target = example["input_ids"][len(generation_prompt(example)) :]
    return {"label": tokenizer.decode(target, skip_special_tokens=True)}


def _tsv_cell(value) -> str:
    return value.translate(TSV_ESCAPES) if isinstance(value, str) else str(value)


def _flatten(nested: list) -> list[int]:
    """Dataset indices in prediction order (Lightning nests them per batch, at varying depth)."""
    if isinstance(nested, int):
        return [nested]
    return [i for item in nested for i in _flatten(item)]
