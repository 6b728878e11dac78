"""SQuAD v1.1 and v2.0 (extractive question answering), from the hub (``rajpurkar/squad``,
``rajpurkar/squad_v2``) or local files in the official JSON layout.

The SSMLoRA paper reports SQuAD EM/F1 on DeBERTaV3-base (its Table 3). The task is learned by the
``extractive_qa`` objective (:mod:`ssmlora_app.objectives.extractive_qa`): a span head, long
contexts cut into overlapping windows (``doc_stride``), n-best post-processing over every window of
a question, and the official scores (:mod:`ssmlora_app.scoring.squad`). SQuAD's test set is
hidden, so ``test`` evaluates the dev set, as the papers report.

Local files: ``data.data_dir`` is a folder with ``train-v1.1.json`` and ``dev-v1.1.json`` (v2.0:
``train-v2.0.json``, ``dev-v2.0.json``), the official downloads: ``{"version", "data": [{"title",
"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}],
"is_impossible"}]}]}]}``; a v2.0 unanswerable question has ``"answers": []``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import datasets

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.registry import register_task

HUB_IDS = {"1.1": "rajpurkar/squad", "2.0": "rajpurkar/squad_v2"}
QA_COLUMNS = ("id", "question", "context", "answers", "answer_starts")
"""The columns of every :meth:`~ssmlora_app.tasks.base.Task.load_qa_split` dataset."""

V1_METRICS = ("f1", "exact_match")
V2_METRICS = ("f1", "exact", "HasAns_f1", "HasAns_exact", "NoAns_f1", "NoAns_exact",
              "best_f1", "best_exact")  # fmt: skip
"""The keys of ``evaluate-v1.1.py`` and ``evaluate-v2.0.py`` (fractions here; the scripts print
percent); ``best_*``: at the best no-answer threshold."""


def rows_from_squad_json(data: list[dict]) -> list[dict]:
    """The ``data`` list of an official SQuAD file -> one row per question (:data:`QA_COLUMNS`),
    in file order."""
    rows = []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append(
                    {
                        "id": qa["id"],
                        "question": qa["question"],
                        "context": paragraph["context"],
                        "answers": [a["text"] for a in qa["answers"]],
                        "answer_starts": [int(a["answer_start"]) for a in qa["answers"]],
                    }
                )
    return rows


@dataclass(frozen=True)
class SquadTask(Task):
    """SQuAD v1.1 (``data.task: squad``) or v2.0 with unanswerable questions (``squad_v2``).

    The fields after ``version`` are HF ``run_qa.py``'s options of the same names."""

    version: Literal["1.1", "2.0"] = "1.1"
    """Which SQuAD: 1.1 (every question has an answer in its context) or 2.0 (a third of the
    dev questions have none: the model may abstain)."""
    doc_stride: int = 128
    """Tokens shared by two consecutive windows of a context longer than ``data.max_length``."""
    max_answer_length: int = 30
    """Longest answer span, in tokens, that post-processing considers."""
    n_best_size: int = 20
    """Start and end positions (the highest logits of each window) whose pairs are candidates."""
    null_score_diff_threshold: float = 0.0
    """v2.0: abstain when the no-answer score exceeds the best span's score by more than this
    (logits; the ``best_*`` metrics show the score at the best threshold)."""

    objectives: ClassVar[tuple[str, ...]] = ("extractive_qa",)
    num_labels: ClassVar[int] = 2

    def __post_init__(self) -> None:
        for field in ("doc_stride", "max_answer_length", "n_best_size"):
            if getattr(self, field) <= 0:
                raise SsmloraError(f"SquadTask.{field} must be positive.")

    @property
    def name(self) -> str:
        return "squad" if self.version == "1.1" else "squad_v2"

    @property
    def metrics(self) -> tuple[str, ...]:
        return V1_METRICS if self.version == "1.1" else V2_METRICS

    def metric_options(self, data_dir: str | None) -> dict:
        """The span post-processing (read by the ``extractive_qa`` objective)."""
        return {
            "version_2": self.version == "2.0",
            "max_answer_length": self.max_answer_length,
            "n_best_size": self.n_best_size,
            "null_score_diff_threshold": self.null_score_diff_threshold,
        }

    def local_file(self, split: str) -> str:
        if split not in ("train", "validation"):
            raise SsmloraError(f"{self.name}: unknown split {split!r} (train or validation).")
        return f"{'train' if split == 'train' else 'dev'}-v{self.version}.json"

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is None:
            return
        if not (Path(data_dir) / self.local_file("validation")).is_file():
            raise SsmloraError(
                f"data.data_dir={data_dir!r} has no {self.local_file('validation')}: give the "
                f"folder of the official SQuAD v{self.version} files ({self.local_file('train')}, "
                f"{self.local_file('validation')}); data.data_dir: null loads "
                f"{HUB_IDS[self.version]} from the hub."
            )

    def load_qa_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        if data_dir is None:
            if split not in ("train", "validation"):
                raise SsmloraError(f"{self.name}: unknown split {split!r} (train or validation).")
            hub = datasets.load_dataset(HUB_IDS[self.version], split=split)
            rows = [
                {
                    "id": r["id"],
                    "question": r["question"],
                    "context": r["context"],
                    "answers": list(r["answers"]["text"]),
                    "answer_starts": [int(s) for s in r["answers"]["answer_start"]],
                }
                for r in hub
            ]
        else:
            path = Path(data_dir) / self.local_file(split)
            if not path.is_file():
                raise SsmloraError(f"{self.name}: no file {path} for split {split!r}.")
            try:
                data = json.loads(path.read_text(encoding="utf-8"))["data"]
                rows = rows_from_squad_json(data)
            except (ValueError, KeyError, TypeError) as err:
                raise SsmloraError(
                    f"{path} is not a SQuAD file (the official JSON layout): {err!r}."
                ) from None
        if self.version == "1.1" and any(not r["answers"] for r in rows):
            raise SsmloraError(
                f"{self.name} {split}: a question without an answer; SQuAD v2.0 files need "
                "data.task: squad_v2."
            )
        return datasets.Dataset.from_list(rows, features=_FEATURES)

    def builtin_tokenizer(self):
        """UTF-8 bytes (offsets per character), for tiny models built from a config."""
        from ssmlora_app.tasks.vocab import byte_tokenizer

        return byte_tokenizer()


_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "context": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "answer_starts": datasets.Sequence(datasets.Value("int64")),
    }
)

register_task("squad", SquadTask)
register_task("squad_v2", partial(SquadTask, version="2.0"))
