"""Bring your own data: classification, regression and prompt/completion (causal-LM) tasks read
from the user's CSV, TSV, JSONL or Parquet files, or from a hub dataset, with a column mapping.

Everything is set in ``data.task_args`` (the fields of :class:`CustomTask`). The files are read and
checked when the data module is built, before any training: a missing column (the message names
the columns that exist), an empty file, labels outside a given label list, a label column mixing
numbers and strings, a validation ratio that leaves a split empty, a text column with nulls (the
message counts them and names ``drop_null_text``) are each a :class:`SsmloraError`.

Labels. Integers (``0``, ``1``, ... also written as digit strings in a CSV) are class ids as they
are. Strings are mapped to ids in a stable order: the order of ``task_args.labels`` when given,
else sorted. The names travel in :class:`~.base.TaskInfo` (``label_names``) to the checkpoint's
hyperparameters, the exported ``adapter_config.json`` and the files ``ssmlora predict`` writes.

Validation: a file (``validation_file``), a hub split (``validation_split``) or a share of the
training rows (``validation_ratio``, seeded, stratified by class for classification).

Causal LM (``task_type: causal_lm``): each row is ``[bos] context prompt completion eos``, the loss
on the completion only; only the optional context is cut when the row is too long, by the same
policy as the long-context tasks (``data.truncation``, see :mod:`ssmlora_app.tasks.lm`). With
``chat_template`` the prompt becomes a user message rendered by the tokenizer's chat template with
the generation prompt, and the completion is the assistant's answer.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.vocab import byte_tokenizer

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


def _clean(value):
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
            ".parquet, or set data.task_args.file_format to csv, tsv, jsonl or parquet."
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
        table = {str(c): [_clean(v) for v in frame[c].tolist()] for c in frame.columns}
    if not table or not next(iter(table.values())):
        raise SsmloraError(f"custom task: {path} has no rows; give a file with a header and rows.")
    return table


def _num_rows(table: Table) -> int:
    return len(next(iter(table.values()))) if table else 0


def _take(table: Table, rows: list[int]) -> Table:
    return {c: [values[i] for i in rows] for c, values in table.items()}


def _label_kind(value) -> str:
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
class _Loaded:
    """The checked splits of one data source."""

    splits: dict[str, Table]
    label_names: tuple[str, ...] | None
    num_labels: int


@dataclass(frozen=True)
class CustomTask:
    """Your own data, configured through ``data.task_args`` (every field below)."""

    name: str = "custom"
    task_type: str = "classification"
    """``classification`` (a class per row, head on the encoder/decoder), ``regression`` (a number
    per row, one output) or ``causal_lm`` (prompt -> completion, loss on the completion)."""
    train_file: str | None = None
    """Training data: a .csv, .tsv, .jsonl or .parquet file (relative to ``data.data_dir`` when
    set). Not needed with ``hub_id``."""
    validation_file: str | None = None
    """Validation data in the same layout; null: carve ``validation_ratio`` of the training rows."""
    test_file: str | None = None
    """Optional held-out data: ``ssmlora test`` evaluates it (and ``validation`` selects
    checkpoints); null: ``test`` evaluates the validation split."""
    file_format: str | None = None
    """csv, tsv, jsonl or parquet; null: from each file's suffix (.json is read as JSONL)."""
    hub_id: str | None = None
    """A hub dataset id instead of files (e.g. ``imdb``), loaded with ``datasets.load_dataset``."""
    hub_config: str | None = None
    """The hub dataset's config (subset) name, if it has several."""
    train_split: str = "train"
    """Hub split used for training."""
    validation_split: str | None = None
    """Hub split used for validation; null: carve ``validation_ratio`` of the training rows."""
    test_split_name: str | None = None
    """Hub split evaluated by ``ssmlora test``, like ``test_file``."""
    text_column: str = "text"
    """Classification/regression: the column with the (first) text."""
    text_pair_column: str | None = None
    """Classification/regression: the column with the second text of a pair; null: single texts."""
    label_column: str = "label"
    """Classification/regression: the label column (class ids, class names or numbers)."""
    labels: tuple[str, ...] | None = None
    """Class names in id order (e.g. ``[negative, positive]``); a row with any other label is an
    error. Null: integer labels are ids as they are, string labels are sorted."""
    validation_ratio: float = 0.1
    """Share of the training rows held out for validation when no validation file/split is given."""
    seed: int = 0
    """Seed of that hold-out (stratified by class for classification)."""
    drop_null_text: bool = False
    """Drop rows whose text (or prompt/completion) is null, instead of stopping with an error."""
    mcc: bool = False
    """Classification: also report Matthews correlation (``val/mcc``) besides accuracy and F1."""
    prompt_column: str = "prompt"
    """Causal LM: the column with the prompt (never cut)."""
    completion_column: str = "completion"
    """Causal LM: the column with the completion (the only tokens with a loss)."""
    context_column: str | None = None
    """Causal LM: an optional long context put before the prompt; the only part that
    ``data.truncation`` cuts when a row is longer than ``data.max_length``."""
    chat_template: bool = False
    """Causal LM: render the prompt as a user message with the tokenizer's chat template (and its
    generation prompt); the completion follows as the assistant's answer."""
    system_prompt: str | None = None
    """Causal LM with ``chat_template``: a system message put first."""
    lm_eval: str = "teacher_forced"
    """Causal LM evaluation: ``teacher_forced`` (token and sequence accuracy of the completion, and
    its loss) or ``generate`` (greedy answers; ROUGE-L, token F1, exact match)."""
    max_new_tokens: int = 64
    """Causal LM: tokens generated per answer, by evaluation under ``lm_eval: generate`` (longer
    training completions are cut to it) and by ``ssmlora predict`` in either mode (under
    ``teacher_forced`` within ``data.max_length``, prompt included; generation stops at EOS)."""

    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise SsmloraError(
                f"data.task_args.task_type={self.task_type!r}: use one of {', '.join(TASK_TYPES)}."
            )
        if self.lm_eval not in LM_EVALS:
            raise SsmloraError(
                f"data.task_args.lm_eval={self.lm_eval!r}: use one of {', '.join(LM_EVALS)}."
            )
        if not 0.0 < self.validation_ratio < 1.0:
            raise SsmloraError(
                f"data.task_args.validation_ratio={self.validation_ratio} must lie strictly "
                "between 0 and 1."
            )
        if self.chat_template and self.context_column:
            raise SsmloraError(
                "data.task_args: chat_template with context_column is not supported (a context "
                "inside a chat message cannot be truncated on its own); put the context into the "
                "prompt column, or leave chat_template false."
            )
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise SsmloraError(f"data.task_args.labels has duplicates: {list(self.labels)}.")

    # What the data module and model read.
    @property
    def objectives(self) -> tuple[str, ...]:
        return ("causal_lm",) if self.task_type == "causal_lm" else ("classification",)

    @property
    def is_regression(self) -> bool:
        return self.task_type == "regression"

    @property
    def metrics(self) -> tuple[str, ...]:
        if self.task_type == "regression":
            return ("pearson", "spearman", "mse")
        if self.task_type == "causal_lm":
            return self.lm_metrics
        return ("accuracy", "macro_f1", "mcc") if self.mcc else ("accuracy", "macro_f1")

    @property
    def lm_metrics(self) -> tuple[str, ...]:
        return LM_EVALS[self.lm_eval]

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return ("validation",)

    @property
    def test_split(self) -> bool:
        return bool(self.test_file or self.test_split_name)

    def _loaded(self) -> _Loaded | None:
        return next(iter(self._cache.values()), None)

    @property
    def num_labels(self) -> int:
        if self.task_type != "classification":
            return 1
        if self.labels is not None:
            return len(self.labels)
        loaded = self._loaded()
        if loaded is None:
            raise SsmloraError(
                "custom task: the number of classes is known once the data is read; list the "
                "classes in data.task_args.labels."
            )
        return loaded.num_labels

    @property
    def label_names(self) -> tuple[str, ...] | None:
        if self.task_type != "classification":
            return None
        if self.labels is not None:
            return tuple(self.labels)
        loaded = self._loaded()
        return loaded.label_names if loaded is not None else None

    def builtin_tokenizer(self):
        """UTF-8 bytes with EOS/pad: any text runs on a tiny model without tokenizer files."""
        return byte_tokenizer()

    # Reading and checking.
    def check_data_dir(self, data_dir: str | None) -> None:
        """Read every split and check it now, before any training."""
        self.load(data_dir)

    def _path(self, file: str, data_dir: str | None) -> Path:
        path = Path(file).expanduser()
        return path if path.is_absolute() or data_dir is None else Path(data_dir) / path

    def _read(self, split: str, data_dir: str | None) -> tuple[Table, str, tuple | None] | None:
        """``(columns, where from, the hub's class names or None)``, or None without that split."""
        files = {"train": self.train_file, "validation": self.validation_file}
        files["test"] = self.test_file
        hub = {"train": self.train_split, "validation": self.validation_split}
        hub["test"] = self.test_split_name
        if self.hub_id is not None:
            if hub[split] is None:
                return None
            try:
                ds = datasets.load_dataset(self.hub_id, self.hub_config, split=hub[split])
            except Exception as err:  # network, unknown id/config/split: datasets raises many
                raise SsmloraError(
                    f"custom task: cannot load {self.hub_id!r} (config {self.hub_config!r}, "
                    f"split {hub[split]!r}) from the hub: {err}"
                ) from None
            table = {c: [_clean(v) for v in ds[c]] for c in ds.column_names}
            if not ds.num_rows:
                raise SsmloraError(f"custom task: hub split {hub[split]!r} has no rows.")
            feature = ds.features.get(self.label_column)
            names = None
            if isinstance(feature, datasets.ClassLabel) and self.task_type == "classification":
                names = tuple(feature.names)
                table[self.label_column] = [
                    None if v is None else names[v] for v in table[self.label_column]
                ]
            return table, f"{self.hub_id}[{hub[split]}]", names
        if files[split] is None:
            if split == "train":
                raise SsmloraError(
                    "custom task: set data.task_args.train_file (a .csv, .tsv, .jsonl or .parquet "
                    "file) or data.task_args.hub_id."
                )
            return None
        path = self._path(files[split], data_dir)
        return read_table(path, self.file_format), str(path), None

    def _columns(self) -> dict[str, str]:
        """Role -> column name, for the task type."""
        if self.task_type == "causal_lm":
            roles = {"prompt": self.prompt_column, "completion": self.completion_column}
            if self.context_column:
                roles["context"] = self.context_column
            return roles
        roles = {"text": self.text_column, "label": self.label_column}
        if self.text_pair_column:
            roles["text_pair"] = self.text_pair_column
        return roles

    def _check_columns(self, table: Table, source: str) -> Table:
        """Keep the mapped columns; handle nulls in the text columns."""
        roles = self._columns()
        for role, column in roles.items():
            if column not in table:
                raise SsmloraError(
                    f"custom task: {source} has no {role} column {column!r}; its columns are "
                    f"{list(table)}. Set data.task_args.{role}_column to one of them."
                )
        table = {role: table[column] for role, column in roles.items()}
        text_roles = [r for r in roles if r != "label"]
        null_rows = [
            i for i in range(_num_rows(table)) if any(table[r][i] is None for r in text_roles)
        ]
        if null_rows:
            if not self.drop_null_text:
                raise SsmloraError(
                    f"custom task: {source} has {len(null_rows)} rows with an empty/null "
                    f"{'/'.join(roles[r] for r in text_roles)} (data rows "
                    f"{', '.join(str(i + 1) for i in null_rows[:5])}"
                    f"{', ...' if len(null_rows) > 5 else ''}); fix them, or set "
                    "data.task_args.drop_null_text: true to drop them."
                )
            keep = sorted(set(range(_num_rows(table))) - set(null_rows))
            table = _take(table, keep)
            if not keep:
                raise SsmloraError(f"custom task: every row of {source} has a null text.")
        for role in text_roles:
            table[role] = [str(v) for v in table[role]]
        if "label" in table:
            missing = [i for i, v in enumerate(table["label"]) if v is None]
            if missing:
                raise SsmloraError(
                    f"custom task: {source} has {len(missing)} rows without a label (data rows "
                    f"{', '.join(str(i + 1) for i in missing[:5])}); fill or remove them."
                )
        return table

    def _label_ids(self, values: list, source: str, names: tuple[str, ...] | None) -> list:
        """Classification labels -> class ids (``names`` fixed), or regression labels -> floats."""
        if self.task_type == "regression":
            out = []
            for i, v in enumerate(values):
                try:
                    out.append(float(v))
                except (TypeError, ValueError):
                    raise SsmloraError(
                        f"custom task: {source} row {i + 1} has the label {v!r}, not a number; a "
                        "regression label column holds numbers only."
                    ) from None
            return out
        if names is not None:
            index = {name: i for i, name in enumerate(names)}
            unknown = sorted({str(v) for v in values} - set(index))
            if unknown:
                raise SsmloraError(
                    f"custom task: {source} has labels {unknown[:10]} that are not in "
                    f"{'data.task_args.labels' if self.labels else 'the training labels'} "
                    f"{list(names)}; fix the file or the label list."
                )
            return [index[str(v)] for v in values]
        ids = [int(float(v)) for v in values]
        if min(ids) < 0:
            raise SsmloraError(
                f"custom task: {source} has the negative class id {min(ids)}; class ids start "
                "at 0 (or use class names)."
            )
        return ids

    def _label_names_of(self, values: list, source: str) -> tuple[str, ...] | None:
        """The class names of the training labels, sorted; None when they are integer ids."""
        if self.labels is not None:
            return tuple(self.labels)
        kinds = defaultdict(list)
        for v in values:
            kinds[_label_kind(v)].append(v)
        if "str" in kinds and len(kinds) > 1:
            number = next(v for k, vs in kinds.items() if k != "str" for v in vs)
            raise SsmloraError(
                f"custom task: the label column of {source} mixes numbers (e.g. {number!r}) and "
                f"strings (e.g. {kinds['str'][0]!r}); make them all one kind, or list every class "
                "name in data.task_args.labels to read them all as names."
            )
        if "float" in kinds:
            raise SsmloraError(
                f"custom task: {source} has non-integer labels (e.g. {kinds['float'][0]!r}); for "
                "numeric targets set data.task_args.task_type: regression."
            )
        if "str" in kinds:
            return tuple(sorted({str(v) for v in values}))
        return None

    def load(self, data_dir: str | None) -> _Loaded:
        """Read, check and split the data (cached per ``data_dir``)."""
        key = str(data_dir)
        if key in self._cache:
            return self._cache[key]
        tables: dict[str, Table] = {}
        sources: dict[str, str] = {}
        class_names = None
        for split in ("train", "validation", "test"):
            read = self._read(split, data_dir)
            if read is not None:
                tables[split] = self._check_columns(read[0], read[1])
                sources[split] = read[1]
                class_names = class_names or read[2]
        names, num_labels = None, 1
        if self.task_type == "classification":
            names = self.labels or class_names  # given, or the hub's ClassLabel order
            if names is None:
                names = self._label_names_of(tables["train"]["label"], sources["train"])
            names = tuple(names) if names is not None else None
            if names is None:  # integer ids: as many classes as the largest id needs
                ids = [int(float(v)) for t in tables.values() for v in t["label"]]
                num_labels = max(ids) + 1
            else:
                num_labels = len(names)
            if num_labels < 2:
                raise SsmloraError(
                    f"custom task: {sources['train']} has a single class; a classifier needs at "
                    "least two (list them in data.task_args.labels)."
                )
        for split, table in tables.items():
            if "label" in table:
                table["label"] = self._label_ids(table["label"], sources[split], names)
        if "validation" not in tables:
            train = tables["train"]
            keys = train["label"] if self.task_type == "classification" else [0] * _num_rows(train)
            train_rows, val_rows = stratified_split(keys, self.validation_ratio, self.seed)
            how = " (stratified by class)" if self.task_type == "classification" else ""
            if not val_rows or not train_rows:
                raise SsmloraError(
                    f"custom task: validation_ratio={self.validation_ratio} of the "
                    f"{len(keys)} training rows{how} leaves the "
                    f"{'validation' if not val_rows else 'training'} split empty; change "
                    "data.task_args.validation_ratio or give data.task_args.validation_file."
                )
            tables["validation"] = _take(train, val_rows)
            tables["train"] = _take(train, train_rows)
        loaded = _Loaded(tables, names, num_labels)
        self._cache[key] = loaded
        return loaded

    def _table(self, split: str, data_dir: str | None) -> Table:
        loaded = self.load(data_dir)
        if split not in loaded.splits:
            raise SsmloraError(
                f"custom task: no {split!r} split; set data.task_args.test_file (or "
                "test_split_name) to evaluate one."
            )
        return loaded.splits[split]

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """Columns ``text_a``, ``text_b``, ``label`` (see :class:`~.base.Task`)."""
        if self.task_type == "causal_lm":
            raise SsmloraError("custom task_type causal_lm: use data.objective causal_lm.")
        table = self._table(split, data_dir)
        label = datasets.Value("float32" if self.is_regression else "int64")
        features = datasets.Features(
            {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"), "label": label}
        )
        pair = table.get("text_pair", [None] * _num_rows(table))
        return datasets.Dataset.from_dict(
            {"text_a": table["text"], "text_b": pair, "label": table["label"]}, features=features
        )

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """Columns of :data:`~.base.LM_COLUMNS`: document = context, prompt, target = completion;
        :meth:`render_lm` then applies the chat template and the end-of-sequence token."""
        if self.task_type != "causal_lm":
            raise SsmloraError(
                "custom task: data.objective causal_lm needs data.task_args.task_type: causal_lm "
                "(prompt/completion columns)."
            )
        table = self._table(split, data_dir)
        n = _num_rows(table)
        return datasets.Dataset.from_dict(
            {
                "document": table.get("context", [""] * n),
                "prompt": table["prompt"],
                "target": table["completion"],
                "choices": [[] for _ in range(n)],
                "label": [-1] * n,
                "references": [[c.strip()] for c in table["completion"]],
            },
            features=datasets.Features(
                {
                    "document": datasets.Value("string"),
                    "prompt": datasets.Value("string"),
                    "target": datasets.Value("string"),
                    "choices": datasets.Sequence(datasets.Value("string")),
                    "label": datasets.Value("int64"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def render_lm(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase
    ) -> datasets.Dataset:
        """Apply the tokenizer's chat template to the prompts (``chat_template``) and, for
        teacher-forced training, end each completion with the EOS token (``target_ids``) so the
        model learns to stop (generation appends EOS itself)."""
        if self.chat_template and not getattr(tokenizer, "chat_template", None):
            raise SsmloraError(
                "data.task_args.chat_template is true but the tokenizer has no chat template; "
                "use an instruct/chat model's tokenizer or set chat_template: false."
            )
        bos = tokenizer.bos_token or None
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

        def render(row: dict) -> dict:
            prompt = row["prompt"]
            if self.chat_template:
                messages = [{"role": "user", "content": prompt}]
                if self.system_prompt:
                    messages.insert(0, {"role": "system", "content": self.system_prompt})
                prompt = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
                if bos and prompt.startswith(bos):  # encode_lm_example adds the BOS token
                    prompt = prompt[len(bos) :]
            out = {"prompt": prompt}
            if self.lm_eval == "teacher_forced":
                ids = tokenizer(row["target"], add_special_tokens=False)["input_ids"]
                out["target_ids"] = list(ids) + eos
            return out

        return ds.map(render, desc="Formatting prompts")
