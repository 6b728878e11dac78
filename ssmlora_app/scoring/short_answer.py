"""Token F1 and exact match for short answers, without SQuAD's article trap.

SQuAD's normalisation (:func:`ssmlora_app.scoring.squad.normalize_answer`) deletes the words
"a", "an" and "the". On multiple-choice letters and other one-word answers that erases the answer
itself: a gold answer "A" normalises to nothing, so an empty prediction matches it (EM 1, and F1 1
under the v2.0 rule "two empty answers agree"). Reproduces no official evaluator; it is our fix
for that case (issue 16, "Metrics that mislead").

The rule: an answer's tokens are SQuAD's (lower case, no punctuation, no articles), except that an
answer made only of articles keeps them. So "A" and "a." are the token ``a``, "the" is ``the``,
"The answer" is ``answer`` as in SQuAD, and only an answer with no word at all is empty. Two empty
answers agree (score 1: both abstain); an empty answer against a non-empty one scores 0.
Everything else is SQuAD's bag-of-tokens F1 and exact match.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence

from ssmlora_app.scoring.squad import normalize_answer

_PUNCTUATION = frozenset(string.punctuation)


def answer_tokens(text: str) -> list[str]:
    """SQuAD-normalised tokens; an answer that has words but only articles keeps them."""
    tokens = normalize_answer(text).split()
    if tokens:
        return tokens
    return "".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split()


def short_answer_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 over :func:`answer_tokens`; 1 when both are empty, 0 when one is."""
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def short_answer_exact(prediction: str, reference: str) -> float:
    """1.0 when the :func:`answer_tokens` are equal."""
    return float(answer_tokens(prediction) == answer_tokens(reference))


def best_over_references(score, prediction: str, references: Sequence[str]) -> float:
    """A prediction's score against its best reference (0 without references)."""
    return max((score(prediction, r) for r in references), default=0.0)
