"""Sequence classification and regression: a ``*ForSequenceClassification`` head on the text
(pair); cross-entropy over the classes, or MSE on one output for regression."""

from __future__ import annotations

from functools import partial

import datasets
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.objectives.base import Objective, Stage, register_objective
from ssmlora_app.objectives.batches import ClassificationBatch
from ssmlora_app.tasks.base import GROUP_COLUMN, INDEX_COLUMN, Task

LABELS = "labels"
"""The encoded rows' label column (what transformers' classifiers call it)."""


def _tokenize(batch: dict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
    pair = batch["text_b"] if any(t is not None for t in batch["text_b"]) else None
    return tokenizer(batch["text_a"], pair, truncation=True, max_length=max_length)


class ClassificationCollator:
    """Pads the token columns of a batch of rows (transformers' ``DataCollatorWithPadding``) and
    sets apart what the model does not read: the labels (absent from an unlabelled split, the
    rows with an :data:`INDEX_COLUMN`), the group ids and the file indices."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad = DataCollatorWithPadding(tokenizer)

    def __call__(self, rows: list[dict]) -> ClassificationBatch:
        set_apart = (LABELS, GROUP_COLUMN, INDEX_COLUMN)
        inputs = self.pad([{k: v for k, v in r.items() if k not in set_apart} for r in rows])
        unlabelled = INDEX_COLUMN in rows[0]
        labels = None if unlabelled else torch.tensor([r[LABELS] for r in rows])
        groups = torch.tensor([r[GROUP_COLUMN] for r in rows]) if GROUP_COLUMN in rows[0] else None
        return ClassificationBatch(inputs=dict(inputs), labels=labels, groups=groups)


@register_objective
class Classification(Objective):
    """Class ids (or a score, for regression) from a classification head."""

    name = "classification"
    family = "classification"

    def build_model(
        self, backbone: BackboneConfig, load_kwargs: dict | None = None
    ) -> PreTrainedModel:
        info = self.info
        return build_classifier(
            backbone,
            num_labels=info.num_labels,
            problem_type=info.problem_type,
            vocab_size=info.vocab_size,
            pad_token_id=info.pad_token_id,
            load_kwargs=load_kwargs,
        )

    @property
    def regression(self) -> bool:
        return self.info.problem_type == "regression"

    # Data.
    def load_split(self, task: Task, split: str, data_dir: str | None) -> datasets.Dataset:
        return task.load_split(split, data_dir)

    def encode(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, task: Task, desc: str
    ) -> datasets.Dataset:
        ds = ds.map(
            partial(_tokenize, tokenizer=tokenizer, max_length=self.info.max_length),
            batched=True,
            remove_columns=["text_a", "text_b"],
            desc=f"Tokenising {desc}",
        )
        return ds.rename_column("label", LABELS)

    def collator(self, tokenizer: PreTrainedTokenizerBase, stage: Stage) -> ClassificationCollator:
        return ClassificationCollator(tokenizer)

    def gold_labels(self, ds: datasets.Dataset) -> list | None:
        return None if self.regression else list(ds[LABELS])

    # Steps.
    def _predictions(self, logits: Tensor) -> Tensor:
        return logits.squeeze(-1).float() if self.regression else logits.argmax(-1)

    def training_loss(self, model: nn.Module, batch: ClassificationBatch) -> Tensor:
        return model(**batch.inputs, labels=batch.labels).loss

    def evaluate(
        self, model: nn.Module, batch: ClassificationBatch, metrics: MetricCollection
    ) -> Tensor:
        out = model(**batch.inputs, labels=batch.labels)
        groups = {} if batch.groups is None else {"groups": batch.groups}
        metrics.update(self._predictions(out.logits), batch.labels, **groups)
        return out.loss

    def predict(self, model: nn.Module, batch: ClassificationBatch) -> Tensor:
        """Class ids, or scores for regression, ``(B,)``."""
        return self._predictions(model(**batch.inputs).logits)

    # Records.
    def label(self, value: float | int) -> str | float | int:
        """A class id as its name (ids without names as ints), a score rounded to 4 digits."""
        if self.regression:
            return round(float(value), 4)
        names = self.info.label_names
        return names[int(value)] if names else int(value)

    def records(
        self, values: list, order: list[int], dataset: datasets.Dataset | None
    ) -> list[dict]:
        rows = sorted(zip(order, values, strict=True), key=lambda pair: pair[0])
        columns = dataset.column_names if dataset is not None else []
        if INDEX_COLUMN in columns:  # an unlabelled split: the file's own indices, no labels
            ids = dataset[INDEX_COLUMN]
            records = [{"index": int(ids[i]), "prediction": self.label(v)} for i, v in rows]
            return sorted(records, key=lambda record: record["index"])
        records = [{"index": i, "prediction": self.label(v)} for i, v in rows]
        if LABELS in columns:
            gold = list(dataset[LABELS])
            for record in records:
                record["label"] = self.label(gold[record["index"]])
        return records
