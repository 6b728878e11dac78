"""Multiple choice on an encoder (RACE, COPA): a ``*ForMultipleChoice`` head scores each option
paired with its context, and a softmax over an example's options makes them compete (options
scored jointly, as in the RoBERTa paper's RACE set-up and HF ``run_swag.py``).

Each option ``k`` of an example is the pair ``(context, question + option_k)``; a question with a
blank (``_``, RACE's cloze questions) gets the option written in the blank instead. Pairs longer
than ``data.max_length`` lose tokens from the longer text first (the article, in practice).
Batches are ``(B, K, L)``: every example of a task has the same number ``K`` of options. The loss
is cross-entropy over the ``K`` scores; evaluation reports ``accuracy`` and, for a task scored per
level (RACE: ``accuracy_middle``, ``accuracy_high``), the accuracy over each level's examples.
"""

from __future__ import annotations

from functools import partial

import datasets
import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from transformers import AutoModelForMultipleChoice, PreTrainedModel, PreTrainedTokenizerBase

from ssmlora_app.backbone import BackboneConfig, build_with_head
from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives.base import Objective, Stage, register_objective
from ssmlora_app.objectives.batches import ChoiceBatch
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.metrics import build_metrics

LEVEL_PREFIX = "accuracy_"
"""Metric ``accuracy_<level>``: the accuracy over one level's examples."""


def option_text(question: str, option: str) -> str:
    """The question with the option in its blank (``_``), or followed by the option."""
    if "_" in question:
        return question.replace("_", option)
    return f"{question} {option}".strip()


def _encode(
    batch: dict, tokenizer: PreTrainedTokenizerBase, max_length: int, levels: tuple
) -> dict:
    counts = {len(choices) for choices in batch["choices"]}
    firsts = [c for c, choices in zip(batch["context"], batch["choices"]) for _ in choices]
    seconds = [option_text(q, o) for q, choices in zip(batch["question"], batch["choices"])
               for o in choices]  # fmt: skip
    if len(counts) != 1:
        raise SsmloraError(f"Multiple choice: examples with {sorted(counts)} options in one split.")
    (k,) = counts
    enc = tokenizer(firsts, seconds, truncation="longest_first", max_length=max_length)
    out = {
        key: [values[i : i + k] for i in range(0, len(values), k)] for key, values in enc.items()
    }
    out["labels"] = batch["label"]
    if levels:
        out["levels"] = [levels.index(level) for level in batch["level"]]
    return out


class ChoiceCollator:
    """Pads every option of every example to the batch's longest: ``(B, K, L)`` tensors."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, rows: list[dict]) -> ChoiceBatch:
        keys = [k for k in rows[0] if k not in ("labels", "levels")]
        length = max(len(ids) for r in rows for ids in r["input_ids"])
        inputs = {}
        for key in keys:
            fill = self.pad_id if key == "input_ids" else 0
            inputs[key] = torch.tensor(
                [[ids + [fill] * (length - len(ids)) for ids in r[key]] for r in rows]
            )
        levels = torch.tensor([r["levels"] for r in rows]) if "levels" in rows[0] else None
        return ChoiceBatch(
            inputs=inputs, labels=torch.tensor([r["labels"] for r in rows]), levels=levels
        )


class LevelAccuracy(Metric):
    """Accuracy over the examples of one level (``update(preds, target, levels)``, all ``(B,)``)."""

    full_state_update = False

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, levels: Tensor) -> None:
        mine = levels == self.level
        self.correct = self.correct + ((preds == target) & mine).sum()
        self.total = self.total + mine.sum()

    def compute(self) -> Tensor:
        return self.correct.float() / self.total.clamp(min=1)


@register_objective
class MultipleChoice(Objective):
    """The gold option among an example's ``K`` (see the module docstring)."""

    name = "multiple_choice"
    family = "multiple_choice"

    @property
    def levels(self) -> tuple[str, ...]:
        """The levels of the ``accuracy_<level>`` metrics, in metric order (their ids)."""
        return tuple(m.removeprefix(LEVEL_PREFIX) for m in self.info.metrics
                     if m.startswith(LEVEL_PREFIX))  # fmt: skip

    def build_model(
        self, backbone: BackboneConfig, load_kwargs: dict | None = None
    ) -> PreTrainedModel:
        info = self.info
        return build_with_head(
            AutoModelForMultipleChoice, backbone, info.vocab_size, info.pad_token_id,
            load_kwargs=load_kwargs,
        )  # fmt: skip

    # Data.
    def load_split(self, task: Task, split: str, data_dir: str | None) -> datasets.Dataset:
        return task.load_choice_split(split, data_dir)

    def encode(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, task: Task, desc: str
    ) -> datasets.Dataset:
        levels = self.levels
        if levels and "level" not in ds.column_names:
            raise SsmloraError(f"{desc} has no 'level' column for the metrics {levels}.")
        return ds.map(
            partial(_encode, tokenizer=tokenizer, max_length=self.info.max_length, levels=levels),
            batched=True,
            remove_columns=ds.column_names,
            desc=f"Tokenising {desc}",
        )

    def collator(self, tokenizer: PreTrainedTokenizerBase, stage: Stage) -> ChoiceCollator:
        return ChoiceCollator(tokenizer)

    def gold_labels(self, ds: datasets.Dataset) -> list | None:
        return list(ds["labels"])

    # Steps.
    def metrics(self, prefix: str) -> MetricCollection:
        info, levels = self.info, self.levels
        plain = tuple(m for m in info.metrics if not m.startswith(LEVEL_PREFIX))
        metrics = dict(build_metrics(plain, info.num_labels, prefix).items(keep_base=True))
        metrics.update({f"{LEVEL_PREFIX}{lv}": LevelAccuracy(i) for i, lv in enumerate(levels)})
        # Two levels' accuracies may hold equal counts after a batch: no shared compute groups.
        return MetricCollection(metrics, prefix=f"{prefix}/", compute_groups=False)

    def training_loss(self, model: nn.Module, batch: ChoiceBatch) -> Tensor:
        return model(**batch.inputs, labels=batch.labels).loss

    def evaluate(self, model: nn.Module, batch: ChoiceBatch, metrics: MetricCollection) -> Tensor:
        out = model(**batch.inputs, labels=batch.labels)
        levels = {} if batch.levels is None else {"levels": batch.levels}
        metrics.update(out.logits.argmax(-1), batch.labels, **levels)
        return out.loss

    def predict(self, model: nn.Module, batch: ChoiceBatch) -> Tensor:
        """The chosen option's index, ``(B,)``."""
        return model(**batch.inputs).logits.argmax(-1)

    def records(
        self, values: list, order: list[int], dataset: datasets.Dataset | None
    ) -> list[dict]:
        rows = sorted(zip(order, values, strict=True), key=lambda pair: pair[0])
        records = [{"index": i, "prediction": int(v)} for i, v in rows]
        if dataset is not None and "labels" in dataset.column_names:
            gold = list(dataset["labels"])
            for record in records:
                record["label"] = int(gold[record["index"]])
        return records
