"""SQuAD v1.1 and v2.0 exact match and F1, as the official evaluation scripts compute them.

Reproduces ``evaluate-v1.1.py`` (the script of the SQuAD v1.1 CodaLab bundle; read in the copy at
csarron/QAModels@5bc8b9a1 ``evaluate-v1.1.py``) and ``evaluate-v2.0.py``
(rajpurkar/SQuAD-explorer@eee5fdbf ``evaluate-v2.0.py``):

- answers are normalised (lower case, punctuation removed, the articles "a", "an", "the" removed,
  whitespace collapsed); a question's score is its best over the reference answers; the totals are
  percentages over all questions;
- v1.1: a question without a prediction scores 0; F1 is 0 whenever no token is shared, so an
  answer that normalises to nothing scores F1 0 (its EM can still be 1);
- v2.0: a question whose answers are all empty after normalisation (an unanswerable question) has
  the one reference ``""``: an empty prediction (abstaining) scores 1, anything else 0; F1 of two
  empty token lists is 1. With no-answer probabilities, ``na_prob_thresh`` turns predictions whose
  probability exceeds it into abstentions, and ``best_exact`` / ``best_f1`` are the scores at the
  best such threshold (the official search, ties in probability in the order given).

Knowing differences: v2.0 with a missing prediction or a missing no-answer probability raises
:class:`ScoringError` (the official script fails there with a ``KeyError``); the precision-recall
curves that ``evaluate-v2.0.py`` draws with ``--out-image-dir`` are not computed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

from ssmlora_app.scoring.errors import ScoringError

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> int:
    """1 when the normalised answers are equal (both scripts)."""
    return int(normalize_answer(prediction) == normalize_answer(reference))


def _overlap_f1(pred: list[str], ref: list[str]) -> float:
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_v1(prediction: str, reference: str) -> float:
    """``evaluate-v1.1.py``'s ``f1_score``: bag-of-tokens F1, 0 when nothing is shared."""
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def f1_v2(prediction: str, reference: str) -> float:
    """``evaluate-v2.0.py``'s ``compute_f1``: as v1.1, but when either side is empty the score is
    1 if both are empty (an abstention on an unanswerable question), else 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    return _overlap_f1(pred, ref)


def answers_from_squad(data: Sequence[Mapping]) -> dict[str, list[str]]:
    """The ``data`` list of a SQuAD JSON file -> {question id: its reference answer texts}
    (an empty list for a v2.0 unanswerable question), in file order."""
    return {
        qa["id"]: [a["text"] for a in qa["answers"]]
        for article in data
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }


def score_v1(answers: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict:
    """``evaluate-v1.1.py``: ``exact_match`` and ``f1`` in percent over every question of
    ``answers``; ``missing`` counts questions without a prediction (they score 0). Predictions for
    other ids are ignored."""
    em = f1 = 0.0
    missing = 0
    for qid, references in answers.items():
        if not references:
            raise ScoringError(f"SQuAD v1.1 question {qid!r} has no reference answer")
        if qid not in predictions:
            missing += 1
            continue
        prediction = predictions[qid]
        em += max(exact_match(prediction, r) for r in references)
        f1 += max(f1_v1(prediction, r) for r in references)
    total = len(answers)
    if total == 0:
        raise ScoringError("SQuAD: no questions to score")
    return {"exact_match": 100 * em / total, "f1": 100 * f1 / total, "missing": missing}


def _v2_raw_scores(
    answers: Mapping[str, Sequence[str]], predictions: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    exact, f1 = {}, {}
    for qid, references in answers.items():
        if qid not in predictions:
            raise ScoringError(
                f"SQuAD v2.0: no prediction for question {qid!r}; give every question a "
                'prediction ("" to abstain)'
            )
        golds = [r for r in references if normalize_answer(r)] or [""]
        prediction = predictions[qid]
        exact[qid] = float(max(exact_match(prediction, g) for g in golds))
        f1[qid] = max(f1_v2(prediction, g) for g in golds)
    return exact, f1


def _percent(scores: Mapping[str, float], qids: Sequence[str]) -> float:
    return 100 * sum(scores[q] for q in qids) / len(qids)


def _best_threshold(
    scores: Mapping[str, float],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """``find_best_thresh``: start with every question abstaining (the unanswerable ones are
    right), then answer questions in increasing no-answer probability and keep the best total."""
    current = best = float(sum(not h for h in has_answer.values()))
    threshold = 0.0
    for qid in sorted(na_probs, key=na_probs.__getitem__):  # stable: ties keep the given order
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, threshold = current, na_probs[qid]
    return 100 * best / len(scores), threshold


def score_v2(
    answers: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict:
    """``evaluate-v2.0.py``: ``exact``, ``f1``, ``total`` and the same for ``HasAns_*`` /
    ``NoAns_*`` (when such questions exist); with ``na_probs`` ({id: probability of no answer})
    also ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh``. A prediction whose
    no-answer probability is above ``na_prob_thresh`` counts as an abstention."""
    if not answers:
        raise ScoringError("SQuAD: no questions to score")
    exact_raw, f1_raw = _v2_raw_scores(answers, predictions)
    has_answer = {qid: bool(refs) for qid, refs in answers.items()}
    probs = dict(na_probs) if na_probs is not None else {q: 0.0 for q in predictions}
    lacking = [q for q in answers if q not in probs]
    if lacking:
        raise ScoringError(
            f"SQuAD v2.0: no no-answer probability for {len(lacking)} question(s), "
            f"e.g. {lacking[0]!r}"
        )

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        return {
            q: float(not has_answer[q]) if probs[q] > na_prob_thresh else s for q, s in raw.items()
        }

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)
    qids = list(answers)
    out: dict = {"exact": _percent(exact, qids), "f1": _percent(f1, qids), "total": len(qids)}
    for prefix, group in (
        ("HasAns", [q for q in qids if has_answer[q]]),
        ("NoAns", [q for q in qids if not has_answer[q]]),
    ):
        if group:
            out[f"{prefix}_exact"] = _percent(exact, group)
            out[f"{prefix}_f1"] = _percent(f1, group)
            out[f"{prefix}_total"] = len(group)
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(
            exact_raw, predictions, probs, has_answer
        )
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(
            f1_raw, predictions, probs, has_answer
        )
    return out
