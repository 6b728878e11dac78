"""What a task provides to the data module, and what the model learns about it (TaskInfo)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import datasets
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TaskInfo:
    """Facts about the task and tokenizer that the model needs; flows data -> model."""

    task: str
    num_labels: int
    """Number of classes; 1 for regression."""
    problem_type: str
    """``single_label_classification`` or ``regression``."""
    metrics: tuple[str, ...]
    """Metric names (see :mod:`ssmlora_app.tasks.metrics`); the first is the headline."""
    eval_splits: tuple[str, ...]
    """Names of the evaluation splits, one dataloader each (MNLI: matched and mismatched)."""
    vocab_size: int | None = None
    pad_token_id: int | None = None


class Task(Protocol):
    """A text (pair) classification or regression task.

    ``load_split`` returns a dataset with columns ``text_a`` (str), ``text_b`` (str or None) and
    ``label`` (int class id, or float for regression).
    """

    name: str
    num_labels: int
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...]

    @property
    def is_regression(self) -> bool: ...

    def check_data_dir(self, data_dir: str | None) -> None:
        """Raise :class:`SsmloraError` now if ``data_dir`` lacks the task's files."""

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset: ...

    def builtin_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """A tokenizer the task brings itself (synthetic tasks), or None."""
