"""L-Eval's closed-ended exam scoring for multiple-choice files, and their option parsers.

Reproduces L-Eval's evaluation (OpenLMLab/LEval@cd34b050, ``Evaluation/auto_eval.py``:
``process_gt_mc``, ``process_output_mc``; ``Evaluation/em.py``: ``exact_match_score``,
``compute_exact_match``) for the files with options (QuALITY, Coursera, TPO):

- the gold answer is the letters A-D of the first word of the output (``"(B) Their …"`` -> ``B``,
  ``"AC"`` -> ``AC``: Coursera questions can have several right options);
- a model's response is reduced to letters: an empty response is ``"None"`` (never right); a
  response that is a piece of ``"ABCD"`` is kept; with one right option the first of A-D in the
  response is the answer; with several (``multiple=True``, L-Eval's Coursera path) the leading run
  of letters, else the letters standing alone (``A.``, ``B)``, ``C ``) before any "Question", else
  the first run of letters;
- the score of a question is 1 when the letter strings are equal, 0.25 when the response's letters
  are a subset of the right ones (some but not all right options: L-Eval's partial credit), else
  0; the file's score is their mean in percent.

Knowing differences: where L-Eval guesses "A" (a gold answer or a response with no letter A-D),
:func:`gold_letters` raises :class:`ScoringError` and :func:`response_letters` returns ``"A"``
only with ``guess=True`` (the default, as L-Eval) — pass ``guess=False`` to get ``""`` (scored 0)
instead. L-Eval chooses the Coursera path from the prediction file's name; here it is the
``multiple`` argument.

Parsing helpers: :func:`parse_options` splits an instruction into the question and its options,
written ``(A) …`` (QuALITY) or ``A. …`` (Coursera, TPO), one per line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ssmlora_app.scoring.errors import ScoringError

LETTERS = "ABCD"
"""The option letters L-Eval's scoring reads."""

PARTIAL_CREDIT = 0.25
"""L-Eval's score for a response naming only some of several right options."""

_OPTION_MARK = re.compile(r"^[ \t]*(?:\(([A-Z])\)|([A-Z])\.)[ \t]*", re.MULTILINE)
_STANDALONE_LETTER = re.compile(r"\s*[A-Z](?=[\s.)])")


@dataclass(frozen=True)
class ExamQuestion:
    """One multiple-choice question of an L-Eval exam file."""

    question: str
    """The instruction's text before its first option."""
    options: tuple[str, ...]
    """Option texts in letter order (A, B, ...), without their marks."""
    gold: str
    """The right letters, as L-Eval reads them (``"B"``, ``"AC"``)."""


def parse_options(instruction: str) -> tuple[str, list[str]]:
    """``"Why …?\\n (A) x\\n (B) y"`` or ``"Why …?\\nA. x\\nB. y"`` -> (question, [x, y, …]).

    Options start a line with ``(A)`` or ``A.``, in order from A; at least two. Raises
    :class:`ScoringError` saying what is missing otherwise."""
    marks = list(_OPTION_MARK.finditer(instruction))
    letters = [m[1] or m[2] for m in marks]
    if "A" not in letters:
        raise ScoringError(
            f"no options: no line starts with '(A)' or 'A.' in the instruction {instruction[:80]!r}"
        )
    first = letters.index("A")
    marks = marks[first:]
    expected = [chr(ord("A") + i) for i in range(len(marks))]
    got = letters[first:]
    if got != expected:
        raise ScoringError(
            f"options out of order: {', '.join(got)} (expected {', '.join(expected)}) in the "
            f"instruction {instruction[:80]!r}"
        )
    if len(marks) < 2:
        raise ScoringError(f"only one option in the instruction {instruction[:80]!r}")
    ends = [m.start() for m in marks[1:]] + [len(instruction)]
    options = [instruction[m.end() : end].strip() for m, end in zip(marks, ends)]
    if not all(options):
        raise ScoringError(f"an empty option in the instruction {instruction[:80]!r}")
    return instruction[: marks[0].start()].strip(), options


def gold_letters(output: str) -> str:
    """L-Eval's ``process_gt_mc``: the letters A-D of the output's first word
    (``"(B) Their …"`` -> ``"B"``, ``"ABD"`` -> ``"ABD"``)."""
    words = output.split()
    letters = re.sub(f"[^{LETTERS}]", "", words[0]) if words else ""
    if not letters:
        raise ScoringError(
            f"no answer letter {'/'.join(LETTERS)} at the start of the gold output {output[:80]!r}"
        )
    return letters


def exam_questions(document: Mapping) -> list[ExamQuestion]:
    """An L-Eval closed-ended document (``instructions``, ``outputs``) -> its questions."""
    questions = []
    for instruction, output in zip(document["instructions"], document["outputs"], strict=True):
        question, options = parse_options(instruction)
        gold = gold_letters(output)
        outside = sorted(set(gold) - set(LETTERS[: len(options)]))
        if outside:
            raise ScoringError(
                f"gold letter {outside[0]} has no option ({len(options)} options) in "
                f"{instruction[:80]!r}"
            )
        questions.append(ExamQuestion(question, tuple(options), gold))
    return questions


def response_letters(response: str, multiple: bool = False, guess: bool = True) -> str:
    """L-Eval's ``process_output_mc``: a model's response -> the letters it answers.

    ``multiple``: the question may have several right options (L-Eval's Coursera path).
    ``guess``: with no letter found, answer ``"A"`` as L-Eval does (else ``""``)."""
    if not response.strip():
        return "None"
    if response in LETTERS:
        return response
    if not multiple:
        for ch in response:
            if ch in LETTERS:
                return ch
    leading = len(response) - len(response.lstrip(LETTERS))
    letters, rest = response[:leading], response[leading:]
    if len(letters) > 1:
        return "".join(sorted(set(letters)))
    rest = rest.split("Question")[0]
    letters += " ".join(_STANDALONE_LETTER.findall(rest)).strip()
    letters = "".join(sorted(set(re.sub(f"[^{LETTERS}]", "", letters))))
    if not letters:
        run = re.search(f"[{LETTERS}]+", rest)
        letters = run[0] if run else ""
    if not letters and guess:
        letters = "A"
    return letters


def exam_score(response: str, gold: str) -> float:
    """L-Eval's ``exact_match_score`` on letter strings: 1 if equal, 0.25 if the response's
    letters are a subset of the gold ones, else 0."""
    if response == gold:
        return 1.0
    if response and set(response) <= set(gold):
        return PARTIAL_CREDIT
    return 0.0


def exam_accuracy(responses: Sequence[str], golds: Sequence[str]) -> dict:
    """L-Eval's ``compute_exact_match`` over letter strings: ``exact_match`` (percent, partial
    credit included), ``correct`` (score 1), ``partial`` (score 0.25) and ``total``."""
    if len(responses) != len(golds):
        raise ScoringError(f"{len(responses)} responses for {len(golds)} questions")
    if not golds:
        raise ScoringError("L-Eval exam: no questions to score")
    scores = [exam_score(r, g) for r, g in zip(responses, golds)]
    return {
        "exact_match": 100.0 * sum(scores) / len(scores),
        "correct": sum(s == 1.0 for s in scores),
        "partial": sum(s == PARTIAL_CREDIT for s in scores),
        "total": len(scores),
    }
