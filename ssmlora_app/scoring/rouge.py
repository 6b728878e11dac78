"""ROUGE-1/2/L F-measure for summaries, as the PEFT-of-SSMs benchmark reports them for SAMSum.

The benchmark (furiosa-ai/ssm-peft@6a0a7247 ``dataset/samsum.py``) calls HF ``evaluate``'s
``rouge`` with its defaults (huggingface/evaluate@a7dd3383 ``metrics/rouge/rouge.py``): Google's
``rouge_score`` with keys rouge1, rouge2, rougeL and rougeLsum, no stemming, its default
tokenizer (lower case, every run of characters other than a-z and 0-9 is a separator), one
reference per summary, and ``BootstrapAggregator``'s ``mid`` F-measure. We report rouge1, rouge2
and rougeL (ROUGE-L over the whole text, no sentence split), computed with torchmetrics'
``ROUGEScore``, which equals ``rouge_score`` per summary on real text (tested).

Knowing differences: the score is the plain mean of the per-summary F-measures; ``evaluate``
reports the median of 1000 bootstrap means of the same numbers (unseeded, so it moves by about
1e-4 between runs around that mean). rougeLsum (ROUGE-L over newline-separated sentences) is not
reported: it equals rougeL for texts without newlines, and torchmetrics would split sentences with
NLTK's punkt model (a data download) rather than on newlines as ``rouge_score`` does. With several
references, each key takes its best reference, as ``rouge_score``'s ``score_multi`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchmetrics.text import ROUGEScore

from ssmlora_app.scoring.errors import ScoringError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_f(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict:
    """Mean ROUGE-1/2/L F-measure in [0, 1]; ``references`` holds one string or a list of
    strings per prediction."""
    if len(predictions) != len(references):
        raise ScoringError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ScoringError("ROUGE: no summaries to score")
    targets = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not t for t in targets):
        raise ScoringError("ROUGE: a prediction without a reference")
    metric = ROUGEScore(rouge_keys=ROUGE_KEYS, use_stemmer=False, accumulate="best")
    scores = metric(list(predictions), targets)
    return {key: scores[f"{key}_fmeasure"].item() for key in ROUGE_KEYS}
