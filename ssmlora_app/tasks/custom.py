"""Bring your own data: classification, regression and prompt/completion (causal-LM) tasks read
from the user's CSV, TSV, JSONL or Parquet files, or from a hub dataset, with a column mapping.

Everything is set in the task's fields (``data.task: {class_path: ssmlora_app.tasks.CustomTask,
init_args: {...}}``, or ``--data.task=CustomTask --data.task.train_file=...``). The files are read
and checked (:mod:`~ssmlora_app.tasks.custom_reader`) when the data module is built, before any
training: a missing column (the message names
the columns that exist), an empty file, labels outside a given label list, a label column mixing
numbers and strings, a validation ratio that leaves a split empty, a text column with nulls (the
message counts them and names ``drop_null_text``) are each a :class:`SsmloraError`.

Labels. Integers (``0``, ``1``, ... also written as digit strings in a CSV) are class ids as they
are. Strings are mapped to ids in a stable order: the order of ``labels`` when given,
else sorted. The names travel in :class:`~.base.TaskInfo` (``label_names``) to the checkpoint's
hyperparameters, the exported ``adapter_config.json`` and the files ``ssmlora predict`` writes.

Validation: a file (``validation_file``), a hub split (``validation_split``) or a share of the
training rows (``validation_ratio``, seeded, stratified by class for classification).

Causal LM (``task_type: causal_lm``): each row is ``[bos] context prompt completion eos``, the loss
on the completion only; only the optional context is cut when the row is too long, by the same
policy as the long-context tasks (``data.truncation``, see :mod:`ssmlora_app.objectives.lm_data`). With
``chat_template`` the prompt becomes a user message rendered by the tokenizer's chat template with
the generation prompt, and the completion is the assistant's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import datasets
from transformers import PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.chat import render_chat
from ssmlora_app.tasks.custom_io import LM_EVALS, TASK_TYPES, LoadedData, num_rows
from ssmlora_app.tasks.custom_reader import CustomReader
from ssmlora_app.tasks.registry import register_task
from ssmlora_app.tasks.vocab import byte_tokenizer


@dataclass
class CustomTask(CustomReader, Task):
    """Your own data: files (CSV, TSV, JSONL, Parquet) or a hub dataset, with a column mapping.
    Short form: ``data.task: custom`` (then set the fields as ``--data.task.train_file=...``
    after ``--data.task=CustomTask``, or in YAML under ``init_args``)."""

    name: str = "custom"
    """The task's name in runs, reports and prediction files."""
    task_type: Literal["classification", "regression", "causal_lm"] = "classification"
    """``classification`` (a class per row, head on the encoder/decoder), ``regression`` (a number
    per row, one output) or ``causal_lm`` (prompt -> completion, loss on the completion)."""
    train_file: str | None = None
    """Training data: a .csv, .tsv, .jsonl or .parquet file (relative to ``data.data_dir`` when
    set). Not needed with ``hub_id``."""
    validation_file: str | None = None
    """Validation data in the same layout; null: carve ``validation_ratio`` of the training rows."""
    test_file: str | None = None
    """Optional held-out data: ``ssmlora test`` evaluates it (and ``validation`` selects
    checkpoints); null: ``test`` evaluates the validation split."""
    file_format: Literal["csv", "tsv", "jsonl", "parquet"] | None = None
    """csv, tsv, jsonl or parquet; null: from each file's suffix (.json is read as JSONL)."""
    hub_id: str | None = None
    """A hub dataset id instead of files (e.g. ``imdb``), loaded with ``datasets.load_dataset``."""
    hub_config: str | None = None
    """The hub dataset's config (subset) name, if it has several."""
    train_split: str = "train"
    """Hub split used for training."""
    validation_split: str | None = None
    """Hub split used for validation; null: carve ``validation_ratio`` of the training rows."""
    test_split_name: str | None = None
    """Hub split evaluated by ``ssmlora test``, like ``test_file``."""
    text_column: str = "text"
    """Classification/regression: the column with the (first) text."""
    text_pair_column: str | None = None
    """Classification/regression: the column with the second text of a pair; null: single texts."""
    label_column: str = "label"
    """Classification/regression: the label column (class ids, class names or numbers)."""
    labels: tuple[str, ...] | None = None
    """Class names in id order (e.g. ``[negative, positive]``); a row with any other label is an
    error. Null: integer labels are ids as they are, string labels are sorted."""
    validation_ratio: float = 0.1
    """Share of the training rows held out for validation when no validation file/split is given."""
    seed: int = 0
    """Seed of that hold-out (stratified by class for classification)."""
    drop_null_text: bool = False
    """Drop rows whose text (or prompt/completion) is null, instead of stopping with an error."""
    mcc: bool = False
    """Classification: also report Matthews correlation (``val/mcc``) besides accuracy and F1."""
    prompt_column: str = "prompt"
    """Causal LM: the column with the prompt (never cut)."""
    completion_column: str = "completion"
    """Causal LM: the column with the completion (the only tokens with a loss)."""
    context_column: str | None = None
    """Causal LM: an optional long context put before the prompt; the only part that
    ``data.truncation`` cuts when a row is longer than ``data.max_length``."""
    chat_template: bool = False
    """Causal LM: render the prompt as a user message with the tokenizer's chat template (and its
    generation prompt); the completion follows as the assistant's answer."""
    system_prompt: str | None = None
    """Causal LM with ``chat_template``: a system message put first."""
    lm_eval: Literal["teacher_forced", "generate"] = "teacher_forced"
    """Causal LM evaluation: ``teacher_forced`` (token and sequence accuracy of the completion, and
    its loss) or ``generate`` (greedy answers; ROUGE-L, token F1, exact match)."""
    max_new_tokens: int = 64
    """Causal LM: tokens generated per answer, by evaluation under ``lm_eval: generate`` (longer
    training completions are cut to it) and by ``ssmlora predict`` in either mode (under
    ``teacher_forced`` within ``data.max_length``, prompt included; generation stops at EOS)."""

    def __post_init__(self) -> None:
        self._loaded_by_dir: dict[str, LoadedData] = {}  # read once per data folder
        if self.task_type not in TASK_TYPES:
            raise SsmloraError(
                f"data.task.task_type={self.task_type!r}: use one of {', '.join(TASK_TYPES)}."
            )
        if self.lm_eval not in LM_EVALS:
            raise SsmloraError(
                f"data.task.lm_eval={self.lm_eval!r}: use one of {', '.join(LM_EVALS)}."
            )
        if not 0.0 < self.validation_ratio < 1.0:
            raise SsmloraError(
                f"data.task.validation_ratio={self.validation_ratio} must lie strictly "
                "between 0 and 1."
            )
        if self.chat_template and self.context_column:
            raise SsmloraError(
                "data.task: chat_template with context_column is not supported (a context "
                "inside a chat message cannot be truncated on its own); put the context into the "
                "prompt column, or leave chat_template false."
            )
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise SsmloraError(f"data.task.labels has duplicates: {list(self.labels)}.")

    # What the data module and model read.
    @property
    def objectives(self) -> tuple[str, ...]:
        return ("causal_lm",) if self.task_type == "causal_lm" else ("classification",)

    @property
    def is_regression(self) -> bool:
        return self.task_type == "regression"

    @property
    def metrics(self) -> tuple[str, ...]:
        if self.task_type == "regression":
            return ("pearson", "spearman", "mse")
        if self.task_type == "causal_lm":
            return self.lm_metrics
        return ("accuracy", "macro_f1", "mcc") if self.mcc else ("accuracy", "macro_f1")

    @property
    def lm_metrics(self) -> tuple[str, ...]:
        return LM_EVALS[self.lm_eval]

    @property
    def test_split(self) -> bool:
        return bool(self.test_file or self.test_split_name)

    def _loaded(self) -> LoadedData | None:
        return next(iter(self._loaded_by_dir.values()), None)

    @property
    def num_labels(self) -> int:
        if self.task_type != "classification":
            return 1
        if self.labels is not None:
            return len(self.labels)
        loaded = self._loaded()
        if loaded is None:
            raise SsmloraError(
                "custom task: the number of classes is known once the data is read; list the "
                "classes in data.task.labels."
            )
        return loaded.num_labels

    @property
    def label_names(self) -> tuple[str, ...] | None:
        if self.task_type != "classification":
            return None
        if self.labels is not None:
            return tuple(self.labels)
        loaded = self._loaded()
        return loaded.label_names if loaded is not None else None

    def builtin_tokenizer(self):
        """UTF-8 bytes with EOS/pad: any text runs on a tiny model without tokenizer files."""
        return byte_tokenizer()

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """Columns ``text_a``, ``text_b``, ``label`` (see :class:`~.base.Task`)."""
        if self.task_type == "causal_lm":
            raise SsmloraError("custom task_type causal_lm: use data.objective causal_lm.")
        table = self._table(split, data_dir)
        label = datasets.Value("float32" if self.is_regression else "int64")
        features = datasets.Features(
            {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"), "label": label}
        )
        pair = table.get("text_pair", [None] * num_rows(table))
        return datasets.Dataset.from_dict(
            {"text_a": table["text"], "text_b": pair, "label": table["label"]}, features=features
        )

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """Columns of :data:`~.base.LM_COLUMNS`: document = context, prompt, target = completion;
        :meth:`render_lm` then applies the chat template and the end-of-sequence token."""
        if self.task_type != "causal_lm":
            raise SsmloraError(
                "custom task: data.objective causal_lm needs data.task.task_type: causal_lm "
                "(prompt/completion columns)."
            )
        table = self._table(split, data_dir)
        n = num_rows(table)
        return datasets.Dataset.from_dict(
            {
                "document": table.get("context", [""] * n),
                "prompt": table["prompt"],
                "target": table["completion"],
                "choices": [[] for _ in range(n)],
                "label": [-1] * n,
                "references": [[c.strip()] for c in table["completion"]],
            },
            features=datasets.Features(
                {
                    "document": datasets.Value("string"),
                    "prompt": datasets.Value("string"),
                    "target": datasets.Value("string"),
                    "choices": datasets.Sequence(datasets.Value("string")),
                    "label": datasets.Value("int64"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def render_lm(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> datasets.Dataset:
        """Apply the tokenizer's chat template to the prompts (``chat_template``) and, for
        teacher-forced training, end each completion with the EOS token (``target_ids``) so the
        model learns to stop (generation appends EOS itself)."""
        return render_chat(
            ds,
            tokenizer,
            self.chat_template,
            self.system_prompt,
            teacher_forced=self.lm_eval == "teacher_forced",
            where="data.task.chat_template",
        )


register_task("custom", CustomTask)
