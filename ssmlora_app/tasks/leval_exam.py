"""L-Eval's closed-ended exam files (An et al. 2023), answered by generation and scored as L-Eval
scores them (:mod:`ssmlora_app.scoring.leval`, :mod:`ssmlora_app.scoring.leval_answers`).

One task for every layout of ``closed-ended/*.jsonl`` (one long document per line, with lists of
``instructions`` and ``outputs``); how a file is answered (``answer``, by default read from the
file) decides its target and its score:

==========  =======================================  ==========================  ===============
answer      files (instructions / outputs)           target the model learns     score
==========  =======================================  ==========================  ===============
letters     QuALITY ``(A) …``; Coursera, TPO         the right letters (``B``,   letter sets,
            ``A. …``; outputs ``(B) text``, ``B``,   ``AC``)                     0.25 partial
            or several letters ``AC``                                            credit
number      GSM (``18``)                             the number                  GSM's number
judge       sci-fi (``True [fact: False]``)          the judgement               loyalty + fact
text        topic retrieval (a topic's name)         the output                  reference in
                                                                                 the answer
==========  =======================================  ==========================  ===============

``exam_score`` is L-Eval's score (its ``exact_match``, partial credit included, here in [0, 1]);
``exam_correct`` the share of questions answered fully right. With several right letters L-Eval
reads responses its Coursera way (``multiple_answers``: by default when any output of the file has
several letters). A prompt is ``\\n\\nQuestion: <instruction>\\nAnswer:`` after the document (the
only part truncation may cut); the instruction keeps its options as the file writes them.

L-Eval files are test sets: they are split by document (``fractions``, ``seed``), as
:mod:`~.longctx` splits QuALITY, or by question (``split_by``; GSM's questions share one
document, its few-shot examples); QuALITY with the options scored by likelihood is the ``quality``
task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import datasets

from ssmlora_app.errors import SsmloraError
from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.leval import exam_questions, gold_letters
from ssmlora_app.scoring.leval_answers import judge_reference
from ssmlora_app.tasks.benchmark_metrics import EXAM_METRICS
from ssmlora_app.tasks.longctx import (
    SPLITS,
    _LongContextTask,
    _row,
    read_leval,
    split_documents,
)
from ssmlora_app.tasks.registry import register_task

ANSWERS = ("letters", "number", "judge", "text")
_NUMBER = re.compile(r"^\s*-?[\d,]*\.?\d+\s*$")


def answer_kind(docs: list[dict], where: str) -> str:
    """How a file is answered, read from its documents: ``letters`` when every instruction has
    options, ``number`` when every output is a number, ``judge`` when every output is a sci-fi
    judgement; else :class:`SsmloraError` asking for ``answer: text``."""
    instructions = [i for d in docs for i in d["instructions"]]
    outputs = [o for d in docs for o in d["outputs"]]
    try:
        for doc in docs:
            exam_questions(doc)
        return "letters"
    except ScoringError:
        pass
    if all(isinstance(o, str) and _NUMBER.match(o) for o in outputs):
        return "number"
    try:
        for output in outputs:
            judge_reference(output)
        return "judge"
    except (ScoringError, TypeError):
        pass
    raise SsmloraError(
        f"{where}: cannot tell how L-Eval scores it: its {len(instructions)} instructions do not "
        "all have options ((A) … or A. …) and its outputs are neither all numbers (GSM) nor "
        "'True [fact: False]' judgements (sci-fi). Set data.task.answer: text to score whether "
        "the reference occurs in the answer (L-Eval's exact match, topic retrieval), or letters / "
        "number / judge to see what does not fit."
    )


@dataclass(frozen=True)
class LEvalExamTask(_LongContextTask):
    """An L-Eval closed-ended file, answered by generation (short form ``data.task:
    leval_exam``; set ``data.task.file`` and ``data.data_dir``)."""

    file: str = "closed-ended/coursera.jsonl"
    answer: Literal["auto", "letters", "number", "judge", "text"] = "auto"
    """How the file is answered and scored (see the module docstring); ``auto``: from the file."""
    multiple_answers: bool | None = None
    """Read responses L-Eval's Coursera way (several right letters); null: when any output of
    the file has several letters."""
    split_by: Literal["auto", "document", "question"] = "auto"
    """What the seeded split deals out: documents (no document in two splits), or questions;
    ``auto``: documents, or questions when the file has fewer than three documents (GSM's 100
    questions share one few-shot context)."""

    name: ClassVar[str] = "leval_exam"
    lm_eval: ClassVar[str] = "generate"
    lm_metrics: ClassVar[tuple[str, ...]] = EXAM_METRICS
    num_labels: ClassVar[int] = 1
    max_new_tokens: ClassVar[int] = 32

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is None:
            raise SsmloraError(
                f"{self.name} reads L-Eval's files: set data.data_dir to the L-Eval data folder "
                f"(with {self.file}) or to the file."
            )
        super().check_data_dir(data_dir)

    def documents(self, data_dir: str) -> list[dict]:
        return read_leval(self.path(data_dir))

    def scoring(self, data_dir: str) -> tuple[str, bool]:
        """(answer kind, multiple) of the file, checked against its documents."""
        docs, where = self.documents(data_dir), str(self.path(data_dir))
        kind = answer_kind(docs, where) if self.answer == "auto" else self.answer
        outputs = [o for d in docs for o in d["outputs"]]
        try:
            if kind == "letters":
                for doc in docs:
                    exam_questions(doc)
            elif kind == "judge":
                for output in outputs:
                    judge_reference(output)
        except (ScoringError, TypeError) as err:
            raise SsmloraError(f"{where} (answer: {kind}): {err}") from None
        if any(not isinstance(o, str) for o in outputs):
            raise SsmloraError(f"{where}: every output must be one string for an exam.")
        multiple = self.multiple_answers
        if multiple is None:
            multiple = kind == "letters" and any(len(gold_letters(o)) > 1 for o in outputs)
        return kind, multiple

    def metric_options(self, data_dir: str | None) -> dict:
        kind, multiple = self.scoring(data_dir)
        return {"answer": kind, "multiple": multiple}

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        if split not in SPLITS:
            raise SsmloraError(f"{self.name}: unknown split {split!r}.")
        self.check_data_dir(data_dir)
        kind, _ = self.scoring(data_dir)
        docs = self.documents(data_dir)
        by = (
            self.split_by
            if self.split_by != "auto"
            else "document"
            if len(docs) >= 3
            else "question"
        )
        if by == "question":
            rows = [r for doc in docs for r in self.rows(doc, kind)]
            picked = split_documents(len(rows), split, self.fractions, self.seed)
            return datasets.Dataset.from_list([rows[i] for i in picked])
        picked = split_documents(len(docs), split, self.fractions, self.seed)
        return datasets.Dataset.from_list([r for i in picked for r in self.rows(docs[i], kind)])

    def rows(self, doc: dict, kind: str) -> list[dict]:
        """One row per question of an L-Eval document answered as ``kind``: the target is the
        gold letters (``letters``) or the output; the reference is the output as the file has it
        (the metric reads it as L-Eval does)."""
        rows = []
        for instruction, output in zip(doc["instructions"], doc["outputs"], strict=True):
            text = instruction.strip()
            question = text if text.startswith("Question") else f"Question: {text}"
            target = gold_letters(output) if kind == "letters" else output.strip()
            prompt = f"\n\n{question}\nAnswer:"
            rows.append(_row(doc["input"], prompt, f" {target}", references=[output]))
        return rows


register_task("leval_exam", LEvalExamTask)
