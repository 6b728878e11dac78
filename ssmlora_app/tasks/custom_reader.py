"""How the ``custom`` task reads and checks your data (a mixin of
:class:`~ssmlora_app.tasks.custom.CustomTask`, whose fields it reads): every split is read and
checked when the data module is built, before any training, and cached per data folder."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import datasets

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.custom_io import (
    LoadedData,
    Table,
    clean,
    label_kind,
    num_rows,
    read_table,
    stratified_split,
    take,
)


class CustomReader:
    """Reading, checking and splitting the data of a :class:`CustomTask` (its fields are this
    mixin's settings)."""

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
            table = {c: [clean(v) for v in ds[c]] for c in ds.column_names}
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
                    "custom task: set data.task.train_file (a .csv, .tsv, .jsonl or .parquet "
                    "file) or data.task.hub_id."
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
                    f"{list(table)}. Set data.task.{role}_column to one of them."
                )
        table = {role: table[column] for role, column in roles.items()}
        text_roles = [r for r in roles if r != "label"]
        null_rows = [
            i for i in range(num_rows(table)) if any(table[r][i] is None for r in text_roles)
        ]
        if null_rows:
            if not self.drop_null_text:
                raise SsmloraError(
                    f"custom task: {source} has {len(null_rows)} rows with an empty/null "
                    f"{'/'.join(roles[r] for r in text_roles)} (data rows "
                    f"{', '.join(str(i + 1) for i in null_rows[:5])}"
                    f"{', ...' if len(null_rows) > 5 else ''}); fix them, or set "
                    "data.task.drop_null_text: true to drop them."
                )
            keep = sorted(set(range(num_rows(table))) - set(null_rows))
            table = take(table, keep)
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
                    f"{'data.task.labels' if self.labels else 'the training labels'} "
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
            kinds[label_kind(v)].append(v)
        if "str" in kinds and len(kinds) > 1:
            number = next(v for k, vs in kinds.items() if k != "str" for v in vs)
            raise SsmloraError(
                f"custom task: the label column of {source} mixes numbers (e.g. {number!r}) and "
                f"strings (e.g. {kinds['str'][0]!r}); make them all one kind, or list every class "
                "name in data.task.labels to read them all as names."
            )
        if "float" in kinds:
            raise SsmloraError(
                f"custom task: {source} has non-integer labels (e.g. {kinds['float'][0]!r}); for "
                "numeric targets set data.task.task_type: regression."
            )
        if "str" in kinds:
            return tuple(sorted({str(v) for v in values}))
        return None

    def load(self, data_dir: str | None) -> LoadedData:
        """Read, check and split the data (cached per ``data_dir``)."""
        key = str(data_dir)
        if key in self._loaded_by_dir:
            return self._loaded_by_dir[key]
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
                    "least two (list them in data.task.labels)."
                )
        for split, table in tables.items():
            if "label" in table:
                table["label"] = self._label_ids(table["label"], sources[split], names)
        if "validation" not in tables:
            train = tables["train"]
            keys = train["label"] if self.task_type == "classification" else [0] * num_rows(train)
            train_rows, val_rows = stratified_split(keys, self.validation_ratio, self.seed)
            how = " (stratified by class)" if self.task_type == "classification" else ""
            if not val_rows or not train_rows:
                raise SsmloraError(
                    f"custom task: validation_ratio={self.validation_ratio} of the "
                    f"{len(keys)} training rows{how} leaves the "
                    f"{'validation' if not val_rows else 'training'} split empty; change "
                    "data.task.validation_ratio or give data.task.validation_file."
                )
            tables["validation"] = take(train, val_rows)
            tables["train"] = take(train, train_rows)
        loaded = LoadedData(tables, names, num_labels)
        self._loaded_by_dir[key] = loaded
        return loaded

    def _table(self, split: str, data_dir: str | None) -> Table:
        loaded = self.load(data_dir)
        if split not in loaded.splits:
            raise SsmloraError(
                f"custom task: no {split!r} split; set data.task.test_file (or "
                "test_split_name) to evaluate one."
            )
        return loaded.splits[split]
