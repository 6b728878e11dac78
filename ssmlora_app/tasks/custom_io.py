"""Reading your own data files for the ``custom`` task: CSV, TSV, JSONL or Parquet as columns,
label kinds, and the seeded stratified hold-out."""

from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ssmlora_app.errors import SsmloraError

TASK_TYPES = ("classification", "regression", "causal_lm")
FILE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
FILE_FORMATS[".parquet"] = "parquet"
LM_EVALS = {
    "teacher_forced": ("token_accuracy", "sequence_accuracy"),
    "generate": ("rougeL", "token_f1", "exact_match"),
}
_INT = re.compile(r"[+-]?\d+")

Table = dict[str, list]
"""Column name -> values (Python objects, None for a null), one list per column."""


def clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_table(path: str | Path, file_format: str | None = None) -> Table:
    """The rows of a CSV/TSV (every cell a string; an empty cell is null), JSONL (values as
    written) or Parquet file, as columns. Raises :class:`SsmloraError` for a missing, unknown or
    empty file."""
    path = Path(path)
    if not path.is_file():
        raise SsmloraError(f"custom task: no file {path} (paths are relative to data.data_dir).")
    fmt = file_format or FILE_FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "tsv", "jsonl", "parquet"):
        raise SsmloraError(
            f"custom task: cannot tell the format of {path}: name it .csv, .tsv, .jsonl or "
            ".parquet, or set data.task.file_format to csv, tsv, jsonl or parquet."
        )
    if path.stat().st_size == 0:
        raise SsmloraError(f"custom task: {path} is empty; give a file with a header and rows.")
    import pandas as pd

    if fmt == "jsonl":
        rows = []
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise SsmloraError(
                        f"custom task: {path}:{number} is not JSON: {err}."
                    ) from None
                if not isinstance(row, dict):
                    raise SsmloraError(f"custom task: {path}:{number} is not a JSON object.")
                rows.append(row)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        table = {c: [row.get(c) for row in rows] for c in columns}
    else:
        try:
            if fmt == "parquet":
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(
                    path,
                    sep="\t" if fmt == "tsv" else ",",
                    dtype=str,
                    keep_default_na=False,
                    na_values=[""],
                    encoding="utf-8-sig",
                )
        except pd.errors.EmptyDataError:
            frame = pd.DataFrame()
        except Exception as err:  # pandas/pyarrow raise many types for malformed files
            raise SsmloraError(f"custom task: cannot read {path} as {fmt}: {err}") from None
        table = {str(c): [clean(v) for v in frame[c].tolist()] for c in frame.columns}
    if not table or not next(iter(table.values())):
        raise SsmloraError(f"custom task: {path} has no rows; give a file with a header and rows.")
    return table


def num_rows(table: Table) -> int:
    return len(next(iter(table.values()))) if table else 0


def take(table: Table, rows: list[int]) -> Table:
    return {c: [values[i] for i in rows] for c, values in table.items()}


def label_kind(value) -> str:
    """``int``, ``float`` or ``str`` (digit strings count as ints: CSV cells are strings)."""
    if isinstance(value, bool):
        return "int"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "int" if value.is_integer() else "float"
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return "int"
    return "str"


def stratified_split(keys: list, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train rows, validation rows)``: within each group of equal ``keys`` (one group for
    regression/LM), a seeded shuffle and the first ``round(ratio * size)`` rows go to validation,
    so each class keeps its share in both splits."""
    groups: dict = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    rng = random.Random(seed)
    validation: list[int] = []
    for key in sorted(groups, key=repr):
        rows = groups[key]
        rng.shuffle(rows)
        validation += rows[: round(ratio * len(rows))]
    chosen = set(validation)
    return [i for i in range(len(keys)) if i not in chosen], sorted(validation)


@dataclass
class LoadedData:
    """The checked splits of one data source."""

    splits: dict[str, Table]
    label_names: tuple[str, ...] | None
    num_labels: int
