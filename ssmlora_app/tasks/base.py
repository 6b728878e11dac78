"""What a task provides to the data module, and what the model learns about it (TaskInfo)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import datasets
from transformers import PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError


@dataclass(frozen=True)
class TaskInfo:
    """Facts about the task, its objective and the tokenizer that the model needs; flows from the
    data module to the model (a CLI link), and is saved with every run and checkpoint."""

    task: str
    """The task's name (runs, reports and prediction files are named after it)."""
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
    """The registered objective (:mod:`ssmlora_app.objectives`): ``classification``,
    ``lm_choice``, ``lm_generate`` or ``lm_teacher_forced``."""
    max_new_tokens: int = 0
    """Generation length of a generating objective (also the room kept for the target), and of
    ``ssmlora predict`` under teacher forcing (within ``max_length``; 0: as many tokens as the
    reference has). 0 for the others."""
    label_names: tuple[str, ...] | None = None
    """Class names in class-id order (predictions are written with them; exported adapters and
    merged models keep them); None when the classes are plain ids."""
    max_length: int | None = None
    """Longest input in tokens (``data.max_length``), checked against the backbone's positions."""
    truncation: str = "middle"
    """How a too-long causal-LM document is shortened (``data.truncation``)."""
    grouped: bool = False
    """The examples come in groups scored together (MultiRC: the answer options of one question):
    evaluation batches carry their ids under :data:`GROUP_COLUMN`, and ``exact_match`` is the
    fraction of groups whose examples are all right (see :mod:`ssmlora_app.tasks.metrics`)."""
    num_beams: int = 1
    """Beams of the generating objectives' decoding (``data.num_beams``; 1: greedy)."""
    min_new_tokens: int = 0
    """Tokens generated before EOS may end an answer (``data.min_new_tokens``)."""
    metric_options: dict | None = None
    """What the task's evaluation needs beyond the metrics' names (:meth:`Task.metric_options`:
    Spider's databases, GLUE's label words, SQuAD's span post-processing, ...); plain values.
    None: nothing."""

    def to_record(self) -> dict:
        """Plain values (lists for tuples) for hyperparameter files and checkpoints."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_record(cls, fields: dict) -> TaskInfo:
        """The info saved by :meth:`to_record` (or by an older version: its ``objective:
        causal_lm`` + ``lm_eval: X`` is the objective ``lm_X``, its ``eval_options`` (extractive
        QA's post-processing) join ``metric_options``; unknown fields are dropped)."""
        fields = dict(fields)
        lm_eval = fields.pop("lm_eval", None)
        if fields.get("objective") == "causal_lm":
            fields["objective"] = f"lm_{lm_eval or 'choice'}"
        eval_options = fields.pop("eval_options", None)
        if eval_options:
            fields["metric_options"] = {**eval_options, **(fields.get("metric_options") or {})}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
        )


class Task:
    """What a task provides to the data module; its optional capabilities are declared here with
    their defaults (a subclass overrides what it offers).

    ``load_split`` returns a dataset with columns ``text_a`` (str), ``text_b`` (str or None) and
    ``label`` (int class id, or float for regression); a ``grouped`` task adds ``group`` (int,
    see :data:`GROUP_COLUMN`). A task learned as a causal LM (``"causal_lm" in objectives``)
    returns from ``load_lm_split`` the columns of :data:`LM_COLUMNS`:

    - ``document`` (str): the long context; the only part truncation may cut (see
      :mod:`ssmlora_app.objectives.lm_data`); "" when there is none.
    - ``prompt`` (str): the question, the answer options and the answer cue; never cut.
    - ``target`` (str): what the model learns to write (the gold option's text for ``choice``).
    - ``choices`` (list[str]): options scored by log-likelihood (``choice``), else [].
    - ``label`` (int): index of the gold option, -1 without options.
    - ``references`` (list[str]): reference answers for the generation metrics, else [].
    - ``target_ids`` (list[int]): optional; token ids used instead of ``target`` (byte LM).
    """

    name: str
    num_labels: int
    metrics: tuple[str, ...]
    """Metric names under ``classification`` (the first is the headline)."""
    eval_splits: tuple[str, ...] = ("validation",)

    objectives: tuple[str, ...] = ("classification",)
    """The objective families the task supports (``data.objective``); the first is its default."""
    lm_eval: str = "choice"
    """How the task is evaluated as a causal LM: ``choice``, ``generate``, ``teacher_forced`` or
    ``label_words`` (a generated class label word, GLUE)."""
    lm_metrics: tuple[str, ...] = ()
    """Metric names under ``causal_lm``."""
    max_new_tokens: int = 0
    """Default generation length (``generate``; ``ssmlora predict`` under ``teacher_forced``)."""
    test_split: bool = False
    """``test`` evaluates a held-out split of its own (not the evaluation splits)."""
    grouped: bool = False
    """The examples come in groups (see :attr:`TaskInfo.grouped`)."""
    label_names: tuple[str, ...] | None = None
    """Class names in class-id order, when the task has them."""
    submission: bool = False
    """The task has unlabelled test splits for a benchmark submission (:meth:`submission_splits`)."""
    choice_levels: tuple[str, ...] = ()
    """Multiple choice: the levels the accuracy is also reported for (RACE: middle, high), each
    as the metric ``accuracy_<level>``; empty for none."""

    @property
    def is_regression(self) -> bool:
        return False

    def check_data_dir(self, data_dir: str | None) -> None:
        """Raise :class:`SsmloraError` now if ``data_dir`` lacks the task's files."""

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        raise SsmloraError(f"{self.name} is a causal-LM task: use data.objective causal_lm.")

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        raise SsmloraError(f"{self.name} has no causal-LM form: use data.objective classification.")

    def load_qa_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """Extractive QA rows (``extractive_qa``): ``id`` (str), ``question`` (str), ``context``
        (str), ``answers`` (list[str], empty for an unanswerable question) and
        ``answer_starts`` (list[int], each answer's character offset in the context)."""
        raise SsmloraError(f"{self.name} is not an extractive QA task.")

    def load_choice_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """Multiple-choice rows (``multiple_choice``): ``context`` (str), ``question`` (str),
        ``choices`` (list[str], as many for every row), ``label`` (int, the gold option) and,
        for a task scored per level (:attr:`choice_levels`), ``level`` (str)."""
        raise SsmloraError(f"{self.name} has no multiple-choice form.")

    def render_lm(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> datasets.Dataset:
        """Tokenizer-dependent formatting of the causal-LM rows (a chat template); default none."""
        return ds

    def builtin_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """A tokenizer the task brings itself (synthetic tasks), or None."""
        return None

    def metric_options(self, data_dir: str | None) -> dict | None:
        """Plain values the task's evaluation needs (:attr:`TaskInfo.metric_options`), e.g.
        Spider's database folder or SQuAD's span post-processing; called once the data module
        checked ``data_dir``. Default none."""
        return None

    def submission_splits(self, data_dir: str | None) -> tuple[str, ...] | None:
        """Unlabelled test splits that ``data.predict_splits: test`` predicts (a benchmark
        submission, GLUE); None when the task has none. ``load_split`` gives them with the label
        :data:`UNLABELLED` and each row's own index under :data:`INDEX_COLUMN`."""
        return None

    def prediction_file(self, split: str) -> str:
        """The TSV ``ssmlora predict`` writes for ``split``: ``<name>.tsv`` for ``validation``,
        ``<name>_<split>.tsv`` for the others."""
        return f"{self.name}.tsv" if split == "validation" else f"{self.name}_{split}.tsv"


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
