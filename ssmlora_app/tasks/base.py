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
    bos_token_id: int | None = None
    """The tokenizer's BOS id (None: it has none); a causal LM built from a config takes it."""
    eos_token_id: int | None = None
    """The tokenizer's EOS id (None: it has none), where generation stops; a causal LM built from a
    config takes it (a pretrained one keeps its own, with a warning when they differ)."""
    objective: str = "classification"
    """``classification`` (a sequence-classification head) or ``causal_lm`` (the LM head, loss on
    the target tokens only)."""
    lm_eval: str = "choice"
    """Causal-LM evaluation: ``choice`` (log-likelihood of each answer option, arg-max),
    ``generate`` (greedy decoding, then a text metric) or ``teacher_forced`` (arg-max and
    log-likelihood of the target tokens: state tracking, bits per byte)."""
    max_new_tokens: int = 0
    """Generation length for ``lm_eval: generate`` (also the room kept for the target), and for
    ``ssmlora predict`` under ``teacher_forced`` (within ``max_length``; 0: as many tokens as the
    reference has). 0 under ``choice``."""
    label_names: tuple[str, ...] | None = None
    """Class names in class-id order (predictions are written with them; exported adapters and
    merged models keep them); None when the classes are plain ids."""
    max_length: int | None = None
    """Longest input in tokens (``data.max_length``), checked against the backbone's positions."""
    grouped: bool = False
    """The examples come in groups scored together (MultiRC: the answer options of one question):
    evaluation batches carry their ids under :data:`GROUP_COLUMN`, and ``exact_match`` is the
    fraction of groups whose examples are all right (see :mod:`ssmlora_app.tasks.metrics`)."""


class Task(Protocol):
    """A text (pair) classification or regression task.

    ``load_split`` returns a dataset with columns ``text_a`` (str), ``text_b`` (str or None) and
    ``label`` (int class id, or float for regression); a task with ``grouped = True`` (optional,
    default False) adds ``group`` (int, see :data:`GROUP_COLUMN`).

    A task whose test splits have no labels (GLUE) may offer ``submission_splits(data_dir)``:
    the names of those splits, which ``data.predict_splits: test`` predicts; ``load_split`` gives
    them with the label :data:`UNLABELLED` and each row's own index under :data:`INDEX_COLUMN`.
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


class LMTask(Protocol):
    """A task served to a causal LM (``objective: causal_lm``), besides or instead of
    classification. A task states what it supports in ``objectives`` (first: its default).

    ``load_lm_split`` returns a dataset with the columns of :data:`LM_COLUMNS`:

    - ``document`` (str): the long context; the only part truncation may cut (see
      :mod:`ssmlora_app.tasks.lm`); "" when there is none.
    - ``prompt`` (str): the question, the answer options and the answer cue; never cut.
    - ``target`` (str): what the model learns to write (the gold option's text for ``choice``).
    - ``choices`` (list[str]): options scored by log-likelihood (``choice``), else [].
    - ``label`` (int): index of the gold option, -1 without options.
    - ``references`` (list[str]): reference answers for the generation metrics, else [].
    - ``target_ids`` (list[int]): optional; token ids used instead of ``target`` (byte LM).
    - ``group`` (int): a grouped task's group id (see :data:`GROUP_COLUMN`).
    """

    name: str
    objectives: tuple[str, ...]
    lm_eval: str
    lm_metrics: tuple[str, ...]
    """Metric names under ``causal_lm`` (``metrics`` stays the classification ones)."""
    max_new_tokens: int
    """Default generation length for ``lm_eval: generate``, and for ``ssmlora predict`` under
    ``teacher_forced`` (0: as many tokens as each target has)."""
    eval_splits: tuple[str, ...]

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset: ...


LM_COLUMNS = ("document", "prompt", "target", "choices", "label", "references")
"""Columns every ``load_lm_split`` dataset has (``target_ids`` is optional)."""

GROUP_COLUMN = "group"
"""Column (and evaluation batch key, a (B,) tensor) of a grouped task's group ids: examples with
the same id are scored together by ``exact_match`` (MultiRC: the answer options of one question).
The model never sees it."""

INDEX_COLUMN = "idx"
"""Column of an unlabelled test split (GLUE's): each example's own index in its file (the GLUE
server matches submissions on it), written as the prediction's ``index``. The model never sees
it."""

UNLABELLED = -1
"""The placeholder label of an unlabelled test split's examples (as on the hub; -1.0 for
regression). Only ``predict`` serves those splits, without their labels; no metric reads it."""
