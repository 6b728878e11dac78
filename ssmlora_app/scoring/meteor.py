"""METEOR with several references, as HF ``evaluate``'s ``meteor`` computes it (NLTK's METEOR).

The PEFT-of-SSMs benchmark scores DART with ``evaluate.load("meteor")``
(furiosa-ai/ssm-peft@6a0a7247 ``dataset/dart.py``; huggingface/evaluate@a7dd3383
``metrics/meteor/meteor.py``): per prediction, NLTK's ``meteor_score`` over the references, all
tokenised by ``nltk.word_tokenize``, with alpha 0.9, beta 3, gamma 0.5; the corpus score is the
mean. NLTK's METEOR (Banerjee & Lavie 2005) lower-cases, aligns unigrams in three stages — exact,
Porter stem, WordNet synonym — and scores

    Fmean = P·R / (α·P + (1 − α)·R),   Penalty = γ · (chunks / matches)^β,
    METEOR = Fmean · (1 − Penalty),

taking the best reference. This module calls that same NLTK function.

Two data resources decide the number, and neither comes from PyPI:

- WordNet (the synonym stage). Taken from NLTK's data (``corpora/wordnet`` under a folder of
  ``nltk.data.path``, e.g. ``python -m nltk.downloader wordnet`` where the internet is reachable),
  or passed as ``wordnet=`` (any object with NLTK's ``synsets(word)``). Without it :func:`meteor`
  stops with :class:`ScoringError`; ``synonyms=False`` computes METEOR without the synonym stage
  (a different, lower-or-equal number: report it under another name).
- NLTK's punkt sentence model, which ``word_tokenize`` runs first. When NLTK has it
  (``tokenizers/punkt_tab``), tokenisation is ``evaluate``'s; without it each text is tokenised as
  one sentence (``preserve_line=True``), which differs only in periods inside a text: "Y. It" keeps
  the token ``Y.`` instead of ``Y`` ``.`` — so scores move slightly for multi-sentence texts. The
  result says which was used (``sentence_split``).

With both resources present the score is ``evaluate``'s. No other knowing difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import nltk
from nltk.stem.porter import PorterStemmer
from nltk.translate.meteor_score import meteor_score

from ssmlora_app.scoring.errors import ScoringError


class _NoSynonyms:
    """A WordNet stand-in with no synsets: METEOR's exact and stem stages only."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


def _has(resource: str) -> bool:
    try:
        nltk.data.find(resource)
    except LookupError:
        return False
    return True


def default_wordnet():
    """NLTK's WordNet when its data is installed, else :class:`ScoringError` saying how to get it
    (or to pass ``synonyms=False``)."""
    from nltk.corpus import wordnet

    try:
        wordnet.synsets("dog")
    except (LookupError, OSError) as err:
        raise ScoringError(
            "METEOR needs WordNet for its synonym stage and NLTK has none: install it with "
            "`python -m nltk.downloader wordnet` where the internet is reachable (or put a "
            "WordNet 3.0 database in NLTK's layout under <NLTK_DATA>/corpora/wordnet), pass "
            "wordnet=..., or score without synonyms (synonyms=False, a different METEOR)"
        ) from err
    return wordnet


def meteor(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    synonyms: bool = True,
    wordnet=None,
    alpha: float = 0.9,
    beta: float = 3.0,
    gamma: float = 0.5,
) -> dict:
    """Mean METEOR in [0, 1] (``meteor``) and the ``sentence_split`` used (``"punkt"``: as
    ``evaluate``; ``"none"``: each text one sentence). ``references`` holds one string or a list
    of strings per prediction."""
    if len(predictions) != len(references):
        raise ScoringError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ScoringError("METEOR: no predictions to score")
    if not synonyms:
        wordnet = _NoSynonyms()
    elif wordnet is None:
        wordnet = default_wordnet()
    punkt = _has("tokenizers/punkt_tab/english/")
    tokenize = nltk.word_tokenize if punkt else partial(nltk.word_tokenize, preserve_line=True)
    stemmer = PorterStemmer()
    total = 0.0
    for prediction, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ScoringError("METEOR: a prediction without a reference")
        total += meteor_score(
            [tokenize(r) for r in refs],
            tokenize(prediction),
            stemmer=stemmer,
            wordnet=wordnet,
            alpha=alpha,
            beta=beta,
            gamma=gamma,
        )
    return {"meteor": total / len(predictions), "sentence_split": "punkt" if punkt else "none"}
