"""DART's references in its two official layouts, and its two scores together.

DART v1.1.1 (Nan et al. 2021) ships each split as JSON (a list of ``{"tripleset": [[s, p, o],
...], "annotations": [{"source", "text"}, ...]}``) and as WebNLG-style XML (``<entry>`` with
``<mtriple>s | p | o</mtriple>`` lines and one ``<lex>`` per reference, CRLF line ends). Both
give the same entries in the same order; the hub's ``dart`` dataset is built from the JSON. An
entry's references are all its annotation texts, which the benchmark scores a prediction against
(``evaluate``'s ``bleu`` and ``meteor`` with a list of references per prediction).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ssmlora_app.scoring.bleu import corpus_bleu
from ssmlora_app.scoring.errors import ScoringError
from ssmlora_app.scoring.meteor import meteor


@dataclass(frozen=True)
class DartEntry:
    """One data-to-text example."""

    triples: tuple[tuple[str, str, str], ...]
    """(subject, predicate, object) triples."""
    references: tuple[str, ...]
    """Reference texts, in file order."""


def read_dart_json(path: str | Path) -> list[DartEntry]:
    """A ``dart-v1.1.1-full-<split>.json`` file."""
    entries = []
    for i, item in enumerate(json.loads(Path(path).read_text(encoding="utf-8"))):
        triples = tuple(tuple(t) for t in item["tripleset"])
        if any(len(t) != 3 for t in triples):
            raise ScoringError(f"{path}: entry {i} has a triple without three parts")
        entries.append(DartEntry(triples, tuple(a["text"] for a in item["annotations"])))
    return entries


def read_dart_xml(path: str | Path) -> list[DartEntry]:
    """A ``dart-v1.1.1-full-<split>.xml`` file (WebNLG layout; any line ends)."""
    entries = []
    for entry in ET.parse(path).getroot().iter("entry"):
        triples = []
        for mtriple in entry.iter("mtriple"):
            parts = tuple(p.strip() for p in (mtriple.text or "").split(" | "))
            if len(parts) != 3:
                raise ScoringError(
                    f"{path}: entry {entry.get('eid')} has a triple without three parts: "
                    f"{mtriple.text!r}"
                )
            triples.append(parts)
        references = tuple(lex.text or "" for lex in entry.iter("lex"))
        entries.append(DartEntry(tuple(triples), references))
    return entries


def linearize(triples: Sequence[Sequence[str]]) -> str:
    """The benchmark's input text: ``s : p : o | s : p : o`` (ssm-peft ``dataset/dart.py``)."""
    return " | ".join(" : ".join(t) for t in triples)


def dart_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]], **meteor_options
) -> dict:
    """``bleu`` (:func:`~.bleu.corpus_bleu`) and ``meteor`` (:func:`~.meteor.meteor`, with its
    ``sentence_split``), each prediction against all its entry's references."""
    result = meteor(predictions, references, **meteor_options)
    return {"bleu": corpus_bleu(predictions, references)["bleu"], **result}
