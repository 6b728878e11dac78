"""DART (Nan et al. 2021): data-to-text, a set of RDF triples -> a sentence; BLEU and METEOR
against all of an entry's references, as the PEFT-of-SSMs benchmark scores it.

Prompt as the benchmark writes it (furiosa-ai/ssm-peft@6a0a7247 ``dataset/dart.py``)::

    Generate text for the following RDF triples:
    <s> : <p> : <o> | <s> : <p> : <o>###<reference text><eos>

Training has one example per reference (the benchmark's ``explode`` of the annotations);
validation and test one per entry, scored against all its references (``bleu``: HF ``evaluate``'s
corpus BLEU; ``meteor``: its METEOR, see :mod:`ssmlora_app.scoring.dart`). Splits: the official
train / dev (``validation``) / test. The benchmark decodes with 5 beams (``data.num_beams: 5``).

Sources: the hub (``Yale-LILY/dart``), or a local folder with DART v1.1.1's files
``dart-v1.1.1-full-{train,dev,test}.json`` (or the WebNLG-style ``.xml``, read when the JSON is
absent). See :mod:`ssmlora_app.tasks.benchmark` for where every benchmark task differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets

from ssmlora_app.errors import SsmloraError
from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.dart import DartEntry, linearize, read_dart_json, read_dart_xml
from ssmlora_app.scoring.meteor import default_wordnet
from ssmlora_app.tasks.benchmark import SEPARATOR, GenerationTask, lm_rows
from ssmlora_app.tasks.registry import register_task

FILE_STEMS = {"train": "train", "validation": "dev", "test": "test"}
"""Split -> the ``<stem>`` of ``dart-v1.1.1-full-<stem>.{json,xml}``."""

PROMPT = "Generate text for the following RDF triples:\n"
"""The benchmark's task prefix."""


@dataclass(frozen=True)
class DartTask(GenerationTask):
    """DART data-to-text (short form ``data.task: dart``): triples -> text, BLEU + METEOR."""

    hub_id: str = "Yale-LILY/dart"
    """Hub dataset (``tripleset``, ``annotations.text``), read when ``data.data_dir`` is null."""
    meteor_synonyms: bool = True
    """METEOR with its WordNet synonym stage (as the benchmark; needs NLTK's WordNet data, see
    docs/scoring.md). False: exact and stem stages only, logged as ``meteor_no_synonyms``."""
    prompt: str = PROMPT
    """Text before the linearised triples."""

    name: ClassVar[str] = "dart"
    max_new_tokens: ClassVar[int] = 128

    @property
    def lm_metrics(self) -> tuple[str, ...]:
        return ("bleu", "meteor" if self.meteor_synonyms else "meteor_no_synonyms")

    def file(self, data_dir: str, split: str) -> Path:
        """The split's file in ``data_dir``: the JSON when present, else the XML (checked for)."""
        base = Path(data_dir) / f"dart-v1.1.1-full-{FILE_STEMS[split]}"
        json_path = base.parent / f"{base.name}.json"
        return json_path if json_path.is_file() else base.parent / f"{base.name}.xml"

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is not None and not self.file(data_dir, "validation").is_file():
            raise SsmloraError(
                f"data.data_dir={data_dir!r} has no dart-v1.1.1-full-dev.json (or .xml): give "
                "the folder of DART v1.1.1's files (dart-v1.1.1-full-{train,dev,test}.json or "
                f".xml); data.data_dir: null loads {self.hub_id} from the hub."
            )
        if self.meteor_synonyms:
            try:
                default_wordnet()
            except ScoringError:
                raise SsmloraError(
                    "DART's METEOR needs NLTK's WordNet data for its synonym stage and NLTK has "
                    "none: run `python -m nltk.downloader wordnet` where the internet is reachable "
                    "(see docs/scoring.md), or set data.task.meteor_synonyms=false (METEOR without "
                    "synonyms, logged as meteor_no_synonyms: a different number)."
                ) from None

    def entries(self, split: str, data_dir: str | None) -> list[DartEntry]:
        self.check_split(self.name, split)
        if data_dir is None:
            ds = datasets.load_dataset(self.hub_id, split=split)
            return [
                DartEntry(
                    tuple(tuple(t) for t in ex["tripleset"]), tuple(ex["annotations"]["text"])
                )
                for ex in ds
            ]
        path = self.file(data_dir, split)
        if not path.is_file():
            raise SsmloraError(
                f"dart: no {path.stem}.json or {path.name} in {data_dir} for split {split!r}."
            )
        try:
            return read_dart_json(path) if path.suffix == ".json" else read_dart_xml(path)
        except (ScoringError, ValueError, KeyError) as err:
            raise SsmloraError(f"dart: cannot read {path}: {err}") from None

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        rows = []
        for i, entry in enumerate(self.entries(split, data_dir)):
            prompt = f"{self.prompt}{linearize(entry.triples)}{SEPARATOR}"
            if not entry.references:
                raise SsmloraError(f"dart: entry {i} of the {split} split has no reference text.")
            if split == "train":  # one example per reference
                rows += [
                    {"prompt": prompt, "target": r, "references": [r]} for r in entry.references
                ]
            else:
                rows.append(
                    {
                        "prompt": prompt,
                        "target": entry.references[0],
                        "references": entry.references,
                    }
                )
        return lm_rows(rows)


register_task("dart", DartTask)
