"""SAMSum (Gliwa et al. 2019): messenger-like dialogues -> an abstractive summary; ROUGE-1/2/L
F-measure, as the PEFT-of-SSMs benchmark scores it (HF ``evaluate``'s ``rouge``, see
:mod:`ssmlora_app.scoring.rouge`).

Prompt as the benchmark writes it (furiosa-ai/ssm-peft@6a0a7247 ``dataset/samsum.py``): no task
prefix, ``<dialogue>###<summary><eos>``. The dialogue is the example's document: the only part
``data.truncation`` may cut when a dialogue does not fit ``data.max_length``. Splits: the official
train / validation / test. The benchmark decodes with 5 beams (``data.num_beams: 5``).

Sources: the hub (``Samsung/samsum``: ``id``, ``dialogue``, ``summary``), or a local folder with
the corpus's files ``train.json``, ``val.json``, ``test.json`` (JSON lists of ``{id, summary,
dialogue}``; ``.jsonl`` with one record per line is read too). See
:mod:`ssmlora_app.tasks.benchmark` for where every benchmark task differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.benchmark import SEPARATOR, GenerationTask, lm_rows, read_json_records
from ssmlora_app.tasks.registry import register_task

FILE_STEMS = {"train": "train", "validation": "val", "test": "test"}
"""Split -> the corpus file's stem."""


@dataclass(frozen=True)
class SamSumTask(GenerationTask):
    """SAMSum dialogue summaries (short form ``data.task: samsum``): ROUGE-1/2/L F."""

    hub_id: str = "Samsung/samsum"
    """Hub dataset (``dialogue``, ``summary``), read when ``data.data_dir`` is null."""

    name: ClassVar[str] = "samsum"
    lm_metrics: ClassVar[tuple[str, ...]] = ("rouge1", "rouge2", "rougeL")
    max_new_tokens: ClassVar[int] = 128

    def file(self, data_dir: str, split: str) -> Path:
        base = Path(data_dir) / FILE_STEMS[split]
        json_path = base.with_suffix(".json")
        return json_path if json_path.is_file() else base.with_suffix(".jsonl")

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is not None and not self.file(data_dir, "validation").is_file():
            raise SsmloraError(
                f"data.data_dir={data_dir!r} has no val.json (or val.jsonl): give the folder of "
                "SAMSum's train.json, val.json and test.json (lists of {id, summary, dialogue}); "
                f"data.data_dir: null loads {self.hub_id} from the hub."
            )

    def records(self, split: str, data_dir: str | None) -> list[dict]:
        self.check_split(self.name, split)
        if data_dir is None:
            return list(datasets.load_dataset(self.hub_id, split=split))
        path = self.file(data_dir, split)
        if not path.is_file():
            raise SsmloraError(f"samsum: no {path.with_suffix('.json').name} in {data_dir}.")
        records = read_json_records(path)
        for i, record in enumerate(records):
            if not isinstance(record, dict) or not {"dialogue", "summary"} <= record.keys():
                raise SsmloraError(f"samsum: {path} record {i} lacks 'dialogue' and 'summary'.")
        return records

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        rows = [
            {
                "document": r["dialogue"],
                "prompt": SEPARATOR,
                "target": r["summary"],
                "references": [r["summary"]],
            }
            for r in self.records(split, data_dir)
        ]
        return lm_rows(rows)


register_task("samsum", SamSumTask)
