"""Long-context tasks for causal LMs: QuALITY (multiple choice), QMSum (query-based meeting
summarisation, ROUGE-1/2/L), NarrativeQA (free-form answers, token F1).

Local files use the L-Eval JSONL layout (one long document per line: ``input``, with lists of
``instructions`` and ``outputs``), e.g. ``closed-ended/quality.jsonl`` and
``open-ended/meeting_summ.jsonl`` under the L-Eval data folder. L-Eval files are test sets only, so
they are split **by document** (seeded shuffle, ``fractions``): no document, hence no QuALITY article,
is in two splits; ``validation`` selects checkpoints and ``test`` is reported. From the hub
(``data.data_dir: null``) the official splits are used, with ``validation`` carved out of the
official training set by document and ``test`` = the official validation set where the official
test answers are hidden.

The document is the only part that truncation may cut (see :mod:`ssmlora_app.objectives.lm_data`).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets
from lightning.pytorch.utilities import rank_zero_info
from transformers import PreTrainedTokenizerFast

from ssmlora_app.errors import SsmloraError
from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.leval import gold_letters, parse_options
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.registry import register_task
from ssmlora_app.tasks.vocab import byte_tokenizer

SPLITS = ("train", "validation", "test")


def read_leval(path: Path) -> list[dict]:
    """The documents of an L-Eval JSONL file: dicts with ``input``, ``instructions``, ``outputs``.

    Lines with the same document text are merged into one document (QMSum has such lines), so a
    document can never land in two splits."""
    docs: dict[str, dict] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            if not {"input", "instructions", "outputs"} <= doc.keys():
                raise SsmloraError(
                    f"{path}:{number} lacks input/instructions/outputs (the L-Eval JSONL layout)."
                )
            merged = docs.setdefault(
                doc["input"], {"input": doc["input"], "instructions": [], "outputs": []}
            )
            merged["instructions"] += list(doc["instructions"])
            merged["outputs"] += list(doc["outputs"])
    return list(docs.values())


def split_documents(count: int, split: str, fractions: tuple[float, ...], seed: int) -> list[int]:
    """Indices of the documents of ``split``: a seeded shuffle cut by ``fractions``, at least one
    document per split when there are three or more."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fractions[1] * count)) if count >= 3 else 0
    n_test = max(1, round(fractions[2] * count)) if count >= 3 else 0
    n_train = count - n_val - n_test
    parts = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return sorted(parts[split])


def in_holdout(key: str, share: float) -> bool:
    """Whether document ``key`` goes to the held-out share (stable across runs and machines)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


@dataclass(frozen=True)
class _LongContextTask(Task):
    """Fields and split logic shared by the long-context tasks."""

    file: str = ""
    """The L-Eval JSONL file, relative to ``data.data_dir`` (the L-Eval data folder), or a path."""
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    """Local files: train/validation/test shares of the documents."""
    seed: int = 0
    """Seed of the document shuffle (local files)."""
    hub_validation_share: float = 0.1
    """Hub: share of the official training documents held out as ``validation``."""

    name: ClassVar[str] = ""
    objectives: ClassVar[tuple[str, ...]] = ("causal_lm",)
    test_split: ClassVar[bool] = True

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.lm_metrics

    def path(self, data_dir: str) -> Path:
        root, file = Path(data_dir), Path(self.file)
        if root.is_file():
            return root
        return file if file.is_absolute() else root / file

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is not None and not self.path(data_dir).is_file():
            raise SsmloraError(
                f"data.data_dir={data_dir!r} has no {self.file}: give the L-Eval data folder (with "
                f"{self.file}), the file itself, or data.task.file; data.data_dir: null loads "
                "the task from the hub."
            )

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        if split not in SPLITS:
            raise SsmloraError(f"{self.name}: unknown split {split!r}.")
        if data_dir is None:
            rows = self.hub_rows(split)
        else:
            docs = read_leval(self.path(data_dir))
            rows = [
                row
                for i in split_documents(len(docs), split, self.fractions, self.seed)
                for row in self.document_rows(docs[i])
            ]
        if split != "train":
            rows = self._distinct(rows, split)
        return datasets.Dataset.from_list(rows)

    def _distinct(self, rows: list[dict], split: str) -> list[dict]:
        """Each distinct example once (L-Eval files repeat some: same document, question and
        answer), so none is scored twice; the number dropped is said."""
        seen, kept = set(), []
        for row in rows:
            key = json.dumps(row, sort_keys=True)
            if key not in seen:
                seen.add(key)
                kept.append(row)
        if len(kept) < len(rows):
            rank_zero_info(
                f"{self.name} {split}: {len(rows) - len(kept)} of {len(rows)} examples repeat "
                "another (same document, question and answer) and are scored once."
            )
        return kept

    def document_rows(self, doc: dict) -> list[dict]:
        """One row per instruction of an L-Eval document."""
        raise NotImplementedError

    def hub_rows(self, split: str) -> list[dict]:
        raise NotImplementedError

    def builtin_tokenizer(self) -> PreTrainedTokenizerFast:
        """UTF-8 bytes with EOS/pad: runs on a tiny model with no tokenizer files (tests)."""
        return byte_tokenizer()


def _row(document: str, prompt: str, target: str, choices=(), label=-1, references=()) -> dict:
    return {
        "document": document,
        "prompt": prompt,
        "target": target,
        "choices": list(choices),
        "label": label,
        "references": list(references),
    }


def parse_quality_instruction(text: str) -> tuple[str, list[str]]:
    """An L-Eval exam instruction -> (question, [option A, B, ...]): options written ``(A) …``
    (QuALITY) or ``A. …`` (Coursera, TPO), two to four of them."""
    try:
        question, options = parse_options(text)
    except ScoringError as err:
        raise SsmloraError(
            f"A multiple-choice instruction needs options (A) … or A. … one per line: {err}. "
            "Files without options (GSM, sci-fi, topic retrieval) are the leval_exam task's."
        ) from None
    if len(options) > 4:
        raise SsmloraError(f"More than four options (A-D) in {text[:80]!r}.")
    return question, options


def multiple_choice_prompt(question: str, options: list[str]) -> str:
    letters = "ABCDEFGH"
    lines = "\n".join(f"({letters[i]}) {o}" for i, o in enumerate(options))
    return f"\n\nQuestion: {question}\n{lines}\nAnswer:"


@dataclass(frozen=True)
class QualityTask(_LongContextTask):
    """QuALITY: a long article, a question and four options; the option with the highest
    log-likelihood (its text after ``Answer:``) is the prediction; accuracy. Other L-Eval files
    with one right option each read the same way (TPO's ``A. …`` options, a bare letter)."""

    name: ClassVar[str] = "quality"
    file: str = "closed-ended/quality.jsonl"
    hub_id: str = "emozilla/quality"
    """Hub dataset (columns article, question, options, answer)."""

    lm_eval: ClassVar[str] = "choice"
    lm_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    num_labels: ClassVar[int] = 4

    def example(self, article: str, question: str, options: list[str], label: int) -> dict:
        choices = [f" {o}" for o in options]
        return _row(
            article, multiple_choice_prompt(question, options), choices[label], choices, label
        )

    def document_rows(self, doc: dict) -> list[dict]:
        rows = []
        for instruction, output in zip(doc["instructions"], doc["outputs"], strict=True):
            question, options = parse_quality_instruction(instruction)
            try:
                gold = gold_letters(output)
            except ScoringError as err:
                raise SsmloraError(f"{self.name}: {err}.") from None
            if len(gold) > 1 or "ABCD".index(gold) >= len(options):
                raise SsmloraError(
                    f"{self.name}: the answer {gold!r} is not one of the {len(options)} options of "
                    f"{instruction[:60]!r}; several right options are the leval_exam task's "
                    "(generated letters, L-Eval's set scoring)."
                )
            rows.append(self.example(doc["input"], question, options, "ABCD".index(gold)))
        return rows

    def hub_rows(self, split: str) -> list[dict]:
        official = "validation" if split == "test" else "train"
        ds = datasets.load_dataset(self.hub_id, split=official)
        rows = []
        for ex in ds:
            held = in_holdout(ex["article"][:2000], self.hub_validation_share)
            if split == "test" or held == (split == "validation"):
                rows.append(
                    self.example(
                        ex["article"], ex["question"], list(ex["options"]), int(ex["answer"])
                    )
                )
        return rows


@dataclass(frozen=True)
class QMSumTask(_LongContextTask):
    """QMSum: a meeting transcript and a query; greedy summary; ROUGE-1/2/L F-measure."""

    name: ClassVar[str] = "qmsum"
    file: str = "open-ended/meeting_summ.jsonl"
    hub_id: str = "pszemraj/qmsum-cleaned"
    """Hub dataset (columns input = query, blank line, transcript; output = summary)."""

    lm_eval: ClassVar[str] = "generate"
    lm_metrics: ClassVar[tuple[str, ...]] = ("rouge1", "rouge2", "rougeL")
    num_labels: ClassVar[int] = 1
    max_new_tokens: ClassVar[int] = 200

    def example(self, transcript: str, query: str, summary: str) -> dict:
        prompt = f"\n\nQuery: {query.strip()}\nSummary:"
        return _row(transcript, prompt, f" {summary.strip()}", references=[summary.strip()])

    def document_rows(self, doc: dict) -> list[dict]:
        return [
            self.example(doc["input"], q, a)
            for q, a in zip(doc["instructions"], doc["outputs"], strict=True)
        ]

    def hub_rows(self, split: str) -> list[dict]:
        ds = datasets.load_dataset(self.hub_id, split=split)
        rows = []
        for ex in ds:
            query, _, transcript = ex["input"].partition("\n\n")
            rows.append(self.example(transcript, query, ex["output"]))
        return rows


@dataclass(frozen=True)
class NarrativeQATask(_LongContextTask):
    """NarrativeQA: a story and a question; a short greedy answer; token F1 (best reference).

    Local files: the L-Eval layout (an ``outputs`` entry may be a list of reference answers)."""

    name: ClassVar[str] = "narrativeqa"
    file: str = "open-ended/narrative_qa.jsonl"
    hub_id: str = "deepmind/narrativeqa"
    """Hub dataset (document.text, question.text, answers[].text)."""

    lm_eval: ClassVar[str] = "generate"
    lm_metrics: ClassVar[tuple[str, ...]] = ("token_f1", "rougeL")
    num_labels: ClassVar[int] = 1
    max_new_tokens: ClassVar[int] = 32

    def example(self, story: str, question: str, answers: list[str]) -> dict:
        prompt = f"\n\nQuestion: {question.strip()}\nAnswer:"
        return _row(
            story, prompt, f" {answers[0].strip()}", references=[a.strip() for a in answers]
        )

    def document_rows(self, doc: dict) -> list[dict]:
        return [
            self.example(doc["input"], q, a if isinstance(a, list) else [a])
            for q, a in zip(doc["instructions"], doc["outputs"], strict=True)
        ]

    def hub_rows(self, split: str) -> list[dict]:
        ds = datasets.load_dataset(self.hub_id, split=split)
        return [
            self.example(
                ex["document"]["text"], ex["question"]["text"], [a["text"] for a in ex["answers"]]
            )
            for ex in ds
        ]


register_task("quality", QualityTask)
register_task("qmsum", QMSumTask)
register_task("narrativeqa", NarrativeQATask)
