"""The nine GLUE tasks, from the hub (``nyu-mll/glue``) or a local folder in the original TSV layout.

Field names follow HF ``run_glue.py``. Local TSVs are read with quoting off: SST-2 and MRPC text
contains ``"`` characters, which a quote-aware reader silently merges or drops.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import datasets

from ssmlora_app.errors import SsmloraError

HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: hub fields, local TSV layout, labels and metrics."""

    name: str
    folder: str
    """Folder name in the original GLUE layout (``SST-2``)."""
    hub_keys: tuple[str, str | None]
    """Text fields on the hub (``run_glue.py``'s ``task_to_keys``)."""
    tsv_keys: tuple[str, str | None, str]
    """Local TSV columns: first text, second text (or None), label."""
    label_names: tuple[str, ...] | None
    """String labels of the TSV in class-id order (hub order); None if already ids or scores."""
    num_labels: int
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    tsv_columns: tuple[str, ...] | None = None
    """Column names of a TSV without header (CoLA); None when the file has a header."""

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def local_files(self) -> dict[str, str]:
        """Split name -> file name in the task folder."""
        files = {"train": "train.tsv"}
        for split in self.eval_splits:
            files[split] = split.replace("validation", "dev") + ".tsv"
        return files

    def task_dir(self, data_dir: str) -> Path:
        """``data_dir`` itself, or its ``<folder>`` subfolder when given the GLUE root."""
        root = Path(data_dir)
        return root / self.folder if (root / self.folder).is_dir() else root

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is None:
            return
        folder = self.task_dir(data_dir)
        files = self.local_files()
        eval_files = [files[s] for s in self.eval_splits]
        if not folder.is_dir() or not all((folder / f).is_file() for f in eval_files):
            raise SsmloraError(
                f"data.data_dir={data_dir!r} has no {self.name} files: expected "
                f"{folder}/{{{', '.join(files.values())}}} (the original GLUE TSV layout; train.tsv "
                "may be absent for validate/test), or a GLUE root with a "
                f"{self.folder}/ folder. Set data.data_dir: null to load {HUB_ID} from the hub."
            )

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """Columns ``text_a``, ``text_b``, ``label`` (see :class:`~.base.Task`)."""
        if data_dir is None:
            ds = datasets.load_dataset(HUB_ID, self.name, split=split)
            a, b = self.hub_keys
            return ds.map(
                lambda ex: {"text_a": ex[a], "text_b": ex[b] if b else None, "label": ex["label"]},
                remove_columns=ds.column_names,
                features=self.features(),
            )
        path = self.task_dir(data_dir) / self.local_files()[split]
        if not path.is_file():
            raise SsmloraError(f"{self.name}: no file {path} for split {split!r}.")
        a, b, label = self.tsv_keys
        used = [c for c in (a, b, label) if c]
        try:
            ds = datasets.load_dataset(
                "csv",
                data_files={split: str(path)},
                split=split,
                sep="\t",
                quoting=csv.QUOTE_NONE,
                header=None if self.tsv_columns else "infer",
                column_names=list(self.tsv_columns) if self.tsv_columns else None,
                usecols=used,
                converters=dict.fromkeys(used, str),
                keep_default_na=False,
                encoding="utf-8-sig",  # MRPC's header starts with a byte-order mark
            )
            ds = ds.map(
                lambda ex: {
                    "text_a": ex[a],
                    "text_b": ex[b] if b else None,
                    "label": self.parse_label(ex[label]),
                },
                remove_columns=ds.column_names,
                features=self.features(),
            )
        except Exception as err:  # pandas/pyarrow/label errors from a malformed file
            raise SsmloraError(
                f"{self.name}: cannot read {path} as the original GLUE TSV (columns "
                f"{list(self.tsv_columns or used)}, tab-separated, no quoting): {err}"
            ) from None
        if len(ds) == 0:
            raise SsmloraError(f"{self.name}: {path} has no rows.")
        return ds

    def parse_label(self, value: str) -> int | float:
        if self.is_regression:
            return float(value)
        if self.label_names is not None:
            return self.label_names.index(value)
        return int(value)

    def features(self) -> datasets.Features:
        label = datasets.Value("float32" if self.is_regression else "int64")
        return datasets.Features(
            {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"), "label": label}
        )

    def builtin_tokenizer(self):
        return None


_NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask(
            "cola",
            "CoLA",
            ("sentence", None),
            ("sentence", None, "label"),
            None,
            2,
            ("mcc", "accuracy"),
            tsv_columns=("source", "label", "mark", "sentence"),
        ),
        GlueTask(
            "sst2", "SST-2", ("sentence", None), ("sentence", None, "label"), None, 2, ("accuracy",)
        ),
        GlueTask(
            "mrpc",
            "MRPC",
            ("sentence1", "sentence2"),
            ("#1 String", "#2 String", "Quality"),
            None,
            2,
            ("accuracy", "f1"),
        ),
        GlueTask(
            "qqp",
            "QQP",
            ("question1", "question2"),
            ("question1", "question2", "is_duplicate"),
            None,
            2,
            ("accuracy", "f1"),
        ),
        GlueTask(
            "stsb",
            "STS-B",
            ("sentence1", "sentence2"),
            ("sentence1", "sentence2", "score"),
            None,
            1,
            ("pearson", "spearman", "mse"),
        ),
        GlueTask(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            ("sentence1", "sentence2", "gold_label"),
            ("entailment", "neutral", "contradiction"),
            3,
            ("accuracy",),
            eval_splits=("validation_matched", "validation_mismatched"),
        ),
        GlueTask(
            "qnli",
            "QNLI",
            ("question", "sentence"),
            ("question", "sentence", "label"),
            _NLI2,
            2,
            ("accuracy",),
        ),
        GlueTask(
            "rte",
            "RTE",
            ("sentence1", "sentence2"),
            ("sentence1", "sentence2", "label"),
            _NLI2,
            2,
            ("accuracy",),
        ),
        GlueTask(
            "wnli",
            "WNLI",
            ("sentence1", "sentence2"),
            ("sentence1", "sentence2", "label"),
            None,
            2,
            ("accuracy",),
        ),
    ]
}
