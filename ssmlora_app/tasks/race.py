"""RACE (reading comprehension from English exams, middle and high school), from the hub
(``ehovy/race``) or the original release: one JSON file per article under
``{train,dev,test}/{middle,high}/``.

The SSMLoRA paper reports RACE accuracy on RoBERTa-base, all / middle / high (its Table 4), from
one model trained on both levels: the task is learned by the ``multiple_choice`` objective (each
question's four options scored jointly by one head) and reports ``accuracy`` with
``accuracy_middle`` and ``accuracy_high`` beside it. RACE's test answers are public: ``test``
evaluates the held-out test split, checkpoints are chosen on dev.

An article file is ``{"id": "middle13.txt", "article": str, "questions": [str], "options":
[[4 str]], "answers": ["A"-"D"]}``; a question with a blank (``_``) gets the option written in the
blank, others the option after the question (as fairseq's RACE preprocessing does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import datasets

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.registry import register_task

HUB_ID = "ehovy/race"
LEVELS = ("middle", "high")
FOLDERS = {"train": "train", "validation": "dev", "test": "test"}
"""Split -> folder of the original release."""
LETTERS = "ABCD"


def race_root(data_dir: str) -> Path:
    """The folder holding ``train``/``dev``/``test``: ``data_dir`` itself or its ``RACE``."""
    root = Path(data_dir)
    return root / "RACE" if (root / "RACE" / "dev").is_dir() else root


def _article_rows(record: dict, level: str, source: str) -> list[dict]:
    """One row per question of an article record (the original file or a hub row's fields)."""
    rows = []
    for i, (question, options, answer) in enumerate(
        zip(record["questions"], record["options"], record["answers"], strict=True)
    ):
        if answer not in LETTERS or len(options) != len(LETTERS):
            raise SsmloraError(
                f"RACE {source}: question {i} needs 4 options and an answer in A-D, got "
                f"{len(options)} options and {answer!r}."
            )
        rows.append(
            {
                "id": f"{record['id']}-{i}",
                "context": record["article"],
                "question": question,
                "choices": list(options),
                "label": LETTERS.index(answer),
                "level": level,
            }
        )
    return rows


def read_race_folder(folder: Path, level: str) -> list[dict]:
    """Every question of the article files in ``folder`` (file name order: ``1.txt``,
    ``2.txt``, ... numerically)."""
    files = sorted(folder.glob("*.txt"), key=lambda p: (len(p.stem), p.stem))
    rows = []
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise SsmloraError(f"{path} is not a RACE article file (JSON): {err}.") from None
        record.setdefault("id", f"{level}{path.name}")
        rows += _article_rows(record, level, str(path))
    return rows


def _hub_rows(level: str, split: str) -> list[dict]:
    """The questions of one level on the hub (a row per question; ``example_id`` names the
    article, so the i-th question of an article gets the id ``<example_id>-<i>`` as locally)."""
    rows, seen = [], {}
    for r in datasets.load_dataset(HUB_ID, level, split=split):
        article = r["example_id"]
        record = {"id": article, "article": r["article"], "questions": [r["question"]],
                  "options": [r["options"]], "answers": [r["answer"]]}  # fmt: skip
        (row,) = _article_rows(record, level, f"{HUB_ID} {level} {split}")
        row["id"] = f"{article}-{seen.setdefault(article, 0)}"
        seen[article] += 1
        rows.append(row)
    return rows


@dataclass(frozen=True)
class RaceTask(Task):
    """RACE: ``data.task: race`` (both levels, accuracy per level too), or one level."""

    level: Literal["all", "middle", "high"] = "all"
    """Which questions: ``all`` (the paper's set-up: one model, scored on all, middle and high)
    or only the middle- or high-school ones."""

    objectives: ClassVar[tuple[str, ...]] = ("multiple_choice",)
    num_labels: ClassVar[int] = 4
    test_split: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return "race" if self.level == "all" else f"race_{self.level}"

    @property
    def levels(self) -> tuple[str, ...]:
        return LEVELS if self.level == "all" else (self.level,)

    @property
    def choice_levels(self) -> tuple[str, ...]:
        return LEVELS if self.level == "all" else ()

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("accuracy", *(f"accuracy_{level}" for level in self.choice_levels))

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is None:
            return
        root = race_root(data_dir)
        missing = [f"dev/{lv}" for lv in self.levels if not (root / "dev" / lv).is_dir()]
        if missing:
            raise SsmloraError(
                f"data.data_dir={data_dir!r} has no {', '.join(missing)}: give the RACE folder "
                "of the original release ({train,dev,test}/{middle,high}/*.txt) or its parent; "
                f"data.data_dir: null loads {HUB_ID} from the hub."
            )

    def load_choice_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        if split not in FOLDERS:
            raise SsmloraError(f"{self.name}: unknown split {split!r} (train, validation, test).")
        rows = []
        for level in self.levels:
            if data_dir is None:
                rows += _hub_rows(level, split)
            else:
                folder = race_root(data_dir) / FOLDERS[split] / level
                if not folder.is_dir():
                    raise SsmloraError(f"{self.name}: no folder {folder} for split {split!r}.")
                rows += read_race_folder(folder, level)
        return datasets.Dataset.from_list(rows)

    def builtin_tokenizer(self):
        """UTF-8 bytes (offsets per character), for tiny models built from a config."""
        from ssmlora_app.tasks.vocab import byte_tokenizer

        return byte_tokenizer()


register_task("race", RaceTask)
