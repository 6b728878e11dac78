"""L-Eval's closed-ended files without options: GSM (numbers), sci-fi (true/false judgements) and
topic retrieval (a topic's name), scored as L-Eval scores them.

Reproduces OpenLMLab/LEval@cd34b050 ``Evaluation/auto_eval.py`` (``process_math``,
``process_gt_judge``, ``process_output_judge``) and ``Evaluation/em.py`` (``normalize_answer``,
``exact_match_score``), read there and written anew:

- :func:`leval_exact_match` is ``exact_match_score``: a reference made only of the letters A-D
  (after removing punctuation, articles and spaces; no lower-casing) is a letter set, scored 1 /
  0.25 / 0 as in :func:`~.leval.exam_score`; any other reference scores 1 when both parse as equal
  numbers, else — when either is not a number — 1 when the reference (lower case, spaces removed)
  occurs in the response (the same), else 0. Topic retrieval is scored with it directly;
- GSM: both the response and the reference go through :func:`math_answer` (``process_math``: the
  token after "The answer is", else the last token with a digit in the first paragraph; its digits
  up to the first period) before :func:`leval_exact_match`;
- sci-fi: the reference ``"True [fact: False]"`` is a loyalty and a fact judgement
  (:func:`judge_reference`), a response gives the first ``true``/``false`` word of each part
  (:func:`judge_response`, ``<error>`` where there is none); each part is scored with
  :func:`leval_exact_match` and the file's score is the mean of the two parts' means (L-Eval
  prints it as "average score of fact and loyalty"), i.e. a question scores the mean of its two.

L-Eval scores topic retrieval per position (first, second, third topic of a conversation) and
averages the three; every conversation has its three questions, so that equals the mean over all
questions, which is what a split by document keeps. Scores here are per question in [0, 1] (L-Eval
prints percent).

Knowing difference: a sci-fi response without ``[fact:`` stops L-Eval (an ``IndexError`` in
``process_gt_judge``); here its fact judgement is read as ``<error>`` (scored 0) and its loyalty
from the whole response.
"""

from __future__ import annotations

import re
import string

from ssmlora_app.scoring.errors import ScoringError
from ssmlora_app.scoring.leval import LETTERS, exam_score

_PUNCTUATION = frozenset(string.punctuation)
_JUDGEMENT = re.compile(r"^\s*(true|false)\s*\[fact:\s*(true|false)\s*\]\s*$", re.IGNORECASE)


def _normalize(text: str) -> str:
    """``em.py``'s ``normalize_answer``: no punctuation, no articles, single spaces (case kept)."""
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def leval_exact_match(prediction: str, reference: str) -> float:
    """``em.py``'s ``exact_match_score`` (see the module docstring): 1, 0.25 or 0."""
    if all(ch in LETTERS for ch in _normalize(reference)):
        pred, gold = _normalize(prediction), _normalize(reference)
        if pred == gold:
            return 1.0
        return exam_score(pred, gold) if pred else 0.25  # an empty set is a subset, as L-Eval
    try:
        return float(float(prediction) == float(reference))
    except ValueError:
        squeezed = reference.lower().replace(" ", "")
        return float(squeezed in prediction.lower().replace(" ", ""))


def math_answer(text: str) -> str:
    """``process_math``: the number a GSM answer gives (digits only, up to the first period)."""
    match = re.search(r"The answer is (\S+)", text)
    if match:
        token = match[1]
    else:
        words = text.split("\n\n")[0].split(" ")[::-1]
        token = next((w for w in words if any(ch.isdigit() for ch in w)), "")
    digits = ""
    for ch in token:
        if ch.isdigit():
            digits += ch
        if ch == ".":
            break
    return digits


def judge_reference(output: str) -> tuple[str, str]:
    """``"True [fact: False]"`` -> ``("true", "false")`` (loyalty, fact)."""
    match = _JUDGEMENT.match(output)
    if match is None:
        raise ScoringError(
            f"a sci-fi reference is 'True|False [fact: True|False]', not {output[:80]!r}"
        )
    return match[1].lower(), match[2].lower()


def judge_response(response: str) -> tuple[str, str]:
    """``process_output_judge``: the first word containing ``true`` or ``false`` in the part
    before ``[fact:`` and in the part after it (``<error>`` where there is none)."""
    parts = response.lower().split("[fact:")
    loyalty, fact = parts[0], parts[1][:-1] if len(parts) > 1 else ""

    def first(text: str) -> str:
        for word in text.split():
            if "true" in word:
                return "true"
            if "false" in word:
                return "false"
        return "<error>"

    return first(loyalty), first(fact)


def answer_score(response: str, reference: str, kind: str) -> float:
    """One question's L-Eval score for a file of answers of ``kind``: ``number`` (GSM),
    ``judge`` (sci-fi) or ``text`` (topic retrieval)."""
    if kind == "number":
        return leval_exact_match(math_answer(response), math_answer(reference))
    if kind == "judge":
        gold, said = judge_reference(reference), judge_response(response)
        return sum(leval_exact_match(s, g) for s, g in zip(said, gold)) / 2
    if kind == "text":
        return leval_exact_match(response, reference)
    raise ScoringError(f"unknown L-Eval answer kind {kind!r} (number, judge or text)")
