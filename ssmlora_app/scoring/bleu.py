"""Corpus BLEU with several references per sentence, as HF ``evaluate``'s ``bleu`` computes it.

The PEFT-of-SSMs benchmark scores DART with ``evaluate.load("bleu")``
(furiosa-ai/ssm-peft@6a0a7247 ``dataset/dart.py``), which is TensorFlow NMT's ``compute_bleu``
(tensorflow/nmt@263d6dcc ``nmt/scripts/bleu.py``) over the ``13a`` tokenizer of mteval-v13a /
sacrebleu (huggingface/evaluate@a7dd3383 ``metrics/bleu/tokenizer_13a.py``), case-sensitive, 4-gram,
no smoothing:

- n-gram matches are clipped by the largest count of that n-gram in any one reference
  (Papineni et al. 2002, eq. 1), summed over the corpus, per order n = 1..4: p_n;
- BLEU = BP · exp(Σ_n ¼ log p_n), 0 when some p_n is 0;
- BP = 1 if c > r else exp(1 − r/c), c the total hypothesis length and r the sum of each
  sentence's SHORTEST reference length (TF NMT's choice; sacrebleu and torchmetrics take the
  reference closest in length, so they differ from this with several references of unequal
  length; with one reference they agree, which the tests use).

Scores are in [0, 1] like ``evaluate``'s. No knowing difference (smoothing is not offered: the
benchmark does not use it, and ``evaluate``'s and TF NMT's smoothing differ on unigrams).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from ssmlora_app.scoring.errors import ScoringError

_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # symbols stand alone
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period/comma unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period/comma unless before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
)


def tokenize_13a(line: str) -> list[str]:
    """mteval-v13a tokenisation (sacrebleu's ``13a``, ``evaluate``'s ``Tokenizer13a``)."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
            line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def _ngrams(tokens: list[str], max_order: int) -> Counter:
    return Counter(
        tuple(tokens[i : i + n])
        for n in range(1, max_order + 1)
        for i in range(len(tokens) - n + 1)
    )


def bleu_statistics(
    prediction: str, references: str | Sequence[str], max_order: int = 4
) -> tuple[list[int], list[int], int, int]:
    """One sentence's sufficient statistics, which corpus BLEU sums: clipped n-gram matches and
    possible n-grams per order n = 1..``max_order``, the hypothesis length and the shortest
    reference length (all 13a tokens)."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ScoringError("BLEU: a prediction without a reference")
    hyp = tokenize_13a(prediction)
    ref_tokens = [tokenize_13a(r) for r in refs]
    max_ref_counts = Counter()
    for r in ref_tokens:
        max_ref_counts |= _ngrams(r, max_order)  # | keeps each n-gram's largest count
    matches = [0] * max_order
    for ngram, count in (_ngrams(hyp, max_order) & max_ref_counts).items():
        matches[len(ngram) - 1] += count
    possible = [max(len(hyp) - n + 1, 0) for n in range(1, max_order + 1)]
    return matches, possible, len(hyp), min(len(r) for r in ref_tokens)


def bleu_from_statistics(
    matches: Sequence[int], possible: Sequence[int], hyp_length: int, ref_length: int
) -> dict:
    """Corpus BLEU from summed :func:`bleu_statistics` (see :func:`corpus_bleu`)."""
    if ref_length == 0:
        raise ScoringError("BLEU: the references have no tokens")
    max_order = len(matches)
    precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    geo_mean = (
        math.exp(sum((1.0 / max_order) * math.log(p) for p in precisions))
        if min(precisions) > 0
        else 0.0
    )
    ratio = hyp_length / ref_length
    bp = 1.0 if ratio > 1.0 else (math.exp(1 - 1 / ratio) if ratio > 0 else 0.0)
    return {
        "bleu": geo_mean * bp,
        "precisions": precisions,
        "brevity_penalty": bp,
        "length_ratio": ratio,
        "translation_length": hyp_length,
        "reference_length": ref_length,
    }


def corpus_bleu(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], max_order: int = 4
) -> dict:
    """``bleu`` in [0, 1], with ``precisions`` (per order), ``brevity_penalty``,
    ``length_ratio``, ``translation_length`` and ``reference_length``, as ``evaluate`` returns
    them. ``references`` holds one string or a list of strings per prediction."""
    if len(predictions) != len(references):
        raise ScoringError(f"{len(predictions)} predictions for {len(references)} references")
    matches, possible = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for prediction, refs in zip(predictions, references):
        m, p, h, r = bleu_statistics(prediction, refs, max_order)
        matches = [a + b for a, b in zip(matches, m)]
        possible = [a + b for a, b in zip(possible, p)]
        hyp_length += h
        ref_length += r
    return bleu_from_statistics(matches, possible, hyp_length, ref_length)
