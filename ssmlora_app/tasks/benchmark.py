"""What the tasks of the PEFT-of-SSMs benchmark (furiosa-ai/ssm-peft, the SDLoRA paper's code)
share: its separator, its "tvt" split of a training set, and the base of its generation tasks.

The benchmark (``mamba-peft/dataset/base.py`` at 6a0a7247) writes every example as ``input ###
label<eos>``: the input (with a task prefix) and ``###`` (its tokenizer's ``sep_token``), the
label, and the end-of-text token after generated labels; the loss covers the label only. Its
"tvt" protocol (GLUE, Spider) trains on 80% of the official training set, selects on the other
20% (``datasets``' ``train_test_split(test_size=0.2, seed=123)``) and reports the official
validation set as the test set.

Where we differ, for every task: the input and the separator are tokenised as one string (the
benchmark tokenises the task prefix apart); the tokenizer's BOS comes first when it has one (the
benchmark's GPT-NeoX tokenizer adds none); and ``data.max_length`` bounds each example, with only
a task's long document cut (the benchmark drops Spider examples over 1536 tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import datasets
from transformers import PreTrainedTokenizerFast

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.vocab import byte_tokenizer

SEPARATOR = "###"
"""The benchmark's ``sep_token`` between an input and its label."""

TVT_SEED = 123
"""The seed of the benchmark's train/validation split (``DatasetBase.shuffle_seeds[0]``)."""

TVT_VALIDATION_SHARE = 0.2
"""The share of the official training set the benchmark holds out for validation."""


def tvt_split(train: datasets.Dataset, split: str) -> datasets.Dataset:
    """``train`` (the official training rows, in the hub's order) cut as the benchmark cuts it:
    ``train`` the 80%, ``validation`` the 20% (``train_test_split(test_size=0.2, seed=123)``, the
    same rows as the benchmark's when the rows come in the same order)."""
    if split not in ("train", "validation"):
        raise ValueError(f"tvt_split: {split!r} is not train or validation")
    parts = train.train_test_split(test_size=TVT_VALIDATION_SHARE, seed=TVT_SEED)
    return parts["train" if split == "train" else "test"]


def lm_rows(rows: list[dict]) -> datasets.Dataset:
    """Generation rows (``document``, ``prompt``, ``target``, ``references``) with the other
    causal-LM columns of :data:`~ssmlora_app.tasks.base.LM_COLUMNS` filled in."""
    return datasets.Dataset.from_list(
        [
            {
                "document": r.get("document", ""),
                "prompt": r["prompt"],
                "target": r["target"],
                "choices": [],
                "label": -1,
                "references": list(r["references"]),
            }
            for r in rows
        ]
    )


def read_json_records(path: Path) -> list[dict]:
    """A JSON list of records, or JSON Lines (one record per line)."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise SsmloraError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(records, list):
        raise SsmloraError(f"{path}: expected a JSON list of records.")
    return records


class GenerationTask(Task):
    """A benchmark task learned as a causal LM and scored on generated text (``lm_generate``):
    train / validation / test splits of its own, metrics named by :attr:`lm_metrics`."""

    objectives: ClassVar[tuple[str, ...]] = ("causal_lm",)
    lm_eval: ClassVar[str] = "generate"
    num_labels: ClassVar[int] = 1
    test_split: ClassVar[bool] = True

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.lm_metrics

    def builtin_tokenizer(self) -> PreTrainedTokenizerFast:
        """UTF-8 bytes with EOS/pad: runs on a tiny model without tokenizer files (tests)."""
        return byte_tokenizer()

    @staticmethod
    def check_split(name: str, split: str) -> None:
        if split not in ("train", "validation", "test"):
            raise SsmloraError(f"{name}: unknown split {split!r} (train, validation or test).")
