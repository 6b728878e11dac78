"""Byte-level language modelling (enwik8 style) from any local text file or folder of files.

The bytes are cut into contiguous non-overlapping windows of ``window`` bytes; the first
``fractions[0]`` of the windows train, the next ``fractions[1]`` validate, the rest test, so no byte
is in two splits. Tokens are the 256 byte values (V=256); the metric is true bits per byte: the mean
negative log-likelihood of each predicted byte in bits, with no label smoothing (the first byte of a
window has no context and is not scored).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets
from transformers import PreTrainedTokenizerFast

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task
from ssmlora_app.tasks.registry import register_task
from ssmlora_app.tasks.vocab import byte_tokenizer


@dataclass(frozen=True)
class ByteLMTask(Task):
    """Next-byte prediction on windows of a local corpus."""

    file: str | None = None
    """A text file or a folder (its ``*.txt`` files, sorted, concatenated); relative to
    ``data.data_dir`` when that is set. Null: ``data.data_dir`` itself."""
    window: int = 512
    """Bytes per training/evaluation window (the model sees ``window`` tokens)."""
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    """Train/validation/test shares of the windows, in file order."""

    name: ClassVar[str] = "byte_lm"
    objectives: ClassVar[tuple[str, ...]] = ("causal_lm",)
    lm_eval: ClassVar[str] = "teacher_forced"
    lm_metrics: ClassVar[tuple[str, ...]] = ("bits_per_byte", "token_accuracy")
    metrics: ClassVar[tuple[str, ...]] = lm_metrics
    num_labels: ClassVar[int] = 256
    test_split: ClassVar[bool] = True

    def source(self, data_dir: str | None) -> Path | None:
        if self.file is None:
            return Path(data_dir) if data_dir else None
        path = Path(self.file)
        return path if path.is_absolute() or data_dir is None else Path(data_dir) / path

    def check_data_dir(self, data_dir: str | None) -> None:
        path = self.source(data_dir)
        if path is None or not path.exists():
            raise SsmloraError(
                f"{self.name} needs a text corpus: set data.data_dir (a file or a folder of .txt "
                f"files) or data.task.file; {path} does not exist."
            )
        if self.window < 2:
            raise SsmloraError(f"{self.name}: data.task.window must be at least 2 bytes.")

    def corpus(self, data_dir: str | None) -> bytes:
        path = self.source(data_dir)
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        return b"".join(f.read_bytes() for f in files)

    def windows(self, split: str, data_dir: str | None) -> list[list[int]]:
        data = self.corpus(data_dir)
        count = len(data) // self.window
        n_train, n_val = int(self.fractions[0] * count), int(self.fractions[1] * count)
        bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val)}
        bounds["test"] = (n_train + n_val, count)
        if split not in bounds:
            raise SsmloraError(f"{self.name}: unknown split {split!r}.")
        start, stop = bounds[split]
        if stop <= start:
            raise SsmloraError(
                f"{self.name}: the corpus ({len(data)} bytes) gives no {split} window of "
                f"{self.window} bytes; use a bigger corpus or a smaller data.task.window."
            )
        return [list(data[i * self.window : (i + 1) * self.window]) for i in range(start, stop)]

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        # The first byte is the (unscored) context; the rest are targets.
        rows = [
            {
                "document": "",
                "prompt": "",
                "target": "",
                "choices": [],
                "label": -1,
                "references": [],
                "target_ids": w,
            }
            for w in self.windows(split, data_dir)
        ]
        return datasets.Dataset.from_list(rows)

    def builtin_tokenizer(self) -> PreTrainedTokenizerFast:
        return byte_tokenizer(specials=False)


register_task("byte_lm", ByteLMTask)
