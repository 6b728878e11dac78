"""Write ``ssmlora predict``'s predictions to files, with label names.

For each predicted split: ``<task>_<split>.jsonl`` (one ``{"index", "prediction", "label"}`` object
per example, ``label`` being the gold label when the split has one; the records are the
objective's, see :meth:`~ssmlora_app.objectives.Objective.records`) and a TSV in the GLUE
submission layout (``index<TAB>prediction``; the task names the file,
:meth:`~ssmlora_app.tasks.Task.prediction_file`: GLUE's server names for its test splits). Classes are
written as the task's label names (``entailment``) or class ids where the task has none (SST-2,
CoLA, MRPC, QQP: ``0``/``1``), STS-B as a score; a custom task's string labels come back as the
original strings (``TaskInfo.label_names``).

GLUE's unlabelled test splits (``data.predict_splits: test``) give the benchmark submission: the
TSVs ``CoLA.tsv``, ``SST-2.tsv``, ..., ``MNLI-m.tsv``, ``MNLI-mm.tsv`` and ``AX.tsv`` (the
diagnostic set, MNLI model), whose ``index`` is each row's own index in the test file (the hub's
``idx``), which the GLUE server matches on; rows are in that index's order, and the jsonl records
(``<task>_test.jsonl``, ``mnli_test_matched.jsonl``, ...) have no ``label``.

An objective may add files in an official evaluator's format (its ``prediction_files``):
extractive QA writes ``<task>_<split>_predictions.json`` (``{id: answer}``) and, for SQuAD v2.0,
``<task>_<split>_na_prob.json``.

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
from lightning.pytorch.utilities import rank_zero_info

from ssmlora_app.errors import SsmloraError
from ssmlora_app.outputs import check_output_dir
from ssmlora_app.run import RunFolder

FORMATS = ("jsonl", "tsv")
TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
"""What a text prediction's special characters become in the TSV (one line per example)."""


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of ``ssmlora predict`` (the data module's ``predict_split_names``:
    the evaluation splits, or the test splits under ``data.predict_splits: test``) to files."""

    def __init__(
        self,
        output_dir: str | None = None,
        formats: list[str] | None = None,
        overwrite: bool = False,
    ):
        """
        Args:
            output_dir: Folder for the files, new or empty; default a new folder in the run
                evaluated: ``<run>/predictions``, else ``<run>/predictions-2``, ...
            formats: Any of ``jsonl`` and ``tsv`` (GLUE submission layout); default both.
            overwrite: Write into an ``output_dir`` that already holds files, replacing the files
                of the same names.
        """
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.overwrite = overwrite
        self.formats = list(formats or FORMATS)
        unknown = set(self.formats) - set(FORMATS)
        if unknown:
            raise SsmloraError(f"predictions.formats: unknown {sorted(unknown)}; use jsonl, tsv.")

    def _root(self, trainer: L.Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir).expanduser()
        return RunFolder(Path(trainer.log_dir or trainer.default_root_dir)).predictions_dir

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":  # before any prediction: never over a file or earlier results
            check_output_dir(
                self._root(trainer),
                "--predictions.output_dir",
                self.overwrite,
                "--predictions.overwrite",
            )

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: list,
        batch_indices: list,
    ) -> None:
        info = pl_module.task_info
        objective = pl_module.objective
        datamodule = trainer.datamodule
        task = datamodule.task
        splits = datamodule.predict_split_names()
        if len(splits) == 1:  # Lightning unnests a single dataloader's predictions
            predictions = [predictions]
        if len(batch_indices) != len(predictions):  # and nests the indices one level deeper
            batch_indices = [batch_indices]
        root = self._root(trainer)
        root.mkdir(parents=True, exist_ok=True)
        rank = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        written = []
        for split, preds, indices in zip(splits, predictions, batch_indices):
            dataset = datamodule.splits.get(split)
            records = objective.records(_values(preds), _flatten(indices), dataset)
            if "jsonl" in self.formats:
                path = root / f"{info.task}_{split}{rank}.jsonl"
                with path.open("w", encoding="utf-8") as f:
                    for record in records:
                        f.write(json.dumps(record) + "\n")
                written.append(path.name)
            if "tsv" in self.formats:
                name = task.prediction_file(split)
                path = root / (name.removesuffix(".tsv") + rank + ".tsv")
                lines = ["index\tprediction"]
                lines += [f"{r['index']}\t{_tsv_cell(r['prediction'])}" for r in records]
                path.write_text("\n".join(lines) + "\n", encoding="utf-8")
                written.append(path.name)
            for suffix, content in objective.prediction_files(records).items():
                path = root / f"{info.task}_{split}{rank}_{suffix}"
                path.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
                written.append(path.name)
        rank_zero_info(f"Predictions written to {root}: {', '.join(written)}")


def _values(batches: list) -> list:
    """One prediction per example, in prediction order: each batch is a tensor (class ids,
    scores, option indices) or a list of strings (generated answers)."""
    out: list = []
    for batch in batches:
        out += batch.flatten().cpu().tolist() if isinstance(batch, torch.Tensor) else list(batch)
    return out


def _tsv_cell(value) -> str:
    return value.translate(TSV_ESCAPES) if isinstance(value, str) else str(value)


def _flatten(nested: list) -> list[int]:
    """Dataset indices in prediction order (Lightning nests them per batch, at varying depth)."""
    if isinstance(nested, int):
        return [nested]
    return [i for item in nested for i in _flatten(item)]
