"""The nine GLUE tasks, from the hub (``nyu-mll/glue``) or a local folder in the original TSV layout.

Field names follow HF ``run_glue.py``. Local TSVs are read with quoting off: SST-2 and MRPC text
contains ``"`` characters, which a quote-aware reader silently merges or drops.

The test splits (``test``; MNLI ``test_matched``/``test_mismatched`` and the diagnostic set AX as
``test_ax``) have no labels: the GLUE server scores predictions for them, matched on each row's
``index`` (the hub's ``idx``). Their files have a header with an index column and the text
columns, and no label (CoLA's test file has a header though its train/dev files have none; MRPC's
is built without the ``Quality`` column). They load with the placeholder label
:data:`~.base.UNLABELLED` and the row's index under :data:`~.base.INDEX_COLUMN`; only
``ssmlora predict`` with ``data.predict_splits: test`` serves them, and never to a metric.

Options for comparing with the SDLoRA paper (:mod:`~.glue_sdlora`): ``protocol: tvt`` (validation
= a seeded 20% of train, test = the official dev split) and the causal-LM objective, where the
model writes the class's label word (``data.objective: causal_lm``; every task but STS-B).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import datasets
from lightning.pytorch.utilities import rank_zero_warn

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import INDEX_COLUMN, UNLABELLED, Task
from ssmlora_app.tasks.benchmark import tvt_split
from ssmlora_app.tasks.glue_sdlora import label_word_options, label_word_rows
from ssmlora_app.tasks.registry import register_task

HUB_ID = "nyu-mll/glue"

AX_SPLIT = "test_ax"
"""The diagnostic set AX: unlabelled NLI pairs predicted by the MNLI model (``AX.tsv``)."""

AX_FILES = ("AX.tsv", "diagnostic/diagnostic.tsv")
"""Where AX is looked for, in the MNLI folder and in the GLUE root: HF's ``AX.tsv``, or the
``diagnostic/diagnostic.tsv`` of GLUE's ``download_glue_data.py``."""

TEST_INDEX_COLUMNS = ("index", "id")
"""The column of a test TSV that numbers its rows (``index``; QQP's is ``id``)."""


@dataclass(frozen=True)
class GlueSpec:
    """The fixed facts of one GLUE task: hub fields, local TSV layout, labels and metrics."""

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


_NLI2 = ("entailment", "not_entailment")
GLUE_SPECS: dict[str, GlueSpec] = {
    "cola": GlueSpec("CoLA", ("sentence", None), ("sentence", None, "label"), None, 2,
                     ("mcc", "accuracy"), tsv_columns=("source", "label", "mark", "sentence")),
    "sst2": GlueSpec("SST-2", ("sentence", None), ("sentence", None, "label"), None, 2,
                     ("accuracy",)),
    "mrpc": GlueSpec("MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String", "Quality"),
                     None, 2, ("accuracy", "f1")),
    "qqp": GlueSpec("QQP", ("question1", "question2"),
                    ("question1", "question2", "is_duplicate"), None, 2, ("accuracy", "f1")),
    "stsb": GlueSpec("STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2", "score"),
                     None, 1, ("pearson", "spearman", "mse")),
    "mnli": GlueSpec("MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2", "gold_label"),
                     ("entailment", "neutral", "contradiction"), 3, ("accuracy",),
                     eval_splits=("validation_matched", "validation_mismatched")),
    "qnli": GlueSpec("QNLI", ("question", "sentence"), ("question", "sentence", "label"), _NLI2,
                     2, ("accuracy",)),
    "rte": GlueSpec("RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2", "label"), _NLI2,
                    2, ("accuracy",)),
    "wnli": GlueSpec("WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2", "label"),
                     None, 2, ("accuracy",)),
}  # fmt: skip
"""The nine GLUE tasks by name (``run_glue.py``'s names)."""

GlueName = Literal["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]


@dataclass(frozen=True)
class GlueTask(Task):
    """One GLUE task, from the hub (``nyu-mll/glue``) or a local folder in the original TSV
    layout (``data.data_dir``: the GLUE root or the task's folder). Short form: the name alone
    (``data.task: sst2``)."""

    name: GlueName = "sst2"
    """Which GLUE task."""
    protocol: Literal["official", "tvt"] = "official"
    """``official``: train on train, select and report on the dev split(s) (the test labels are
    hidden). ``tvt`` (the SDLoRA repository's): validation = a seeded 20% of train, ``ssmlora
    test`` = the official dev split (MNLI: matched and mismatched together)."""
    label_words: tuple[str, ...] | None = None
    """Causal LM: the word written for each class, in class-id order; null: the class ids as
    digits (``0``, ``1``, ``2``), as the SDLoRA repository."""
    instruction: str | None = None
    """Causal LM: the text before the example; null: the SDLoRA repository's (promptbench's,
    which names the digit label words); ``""``: none."""
    out_of_class: Literal["wrong", "drop"] = "wrong"
    """Causal LM: an answer that is no label word counts as ``wrong``, or is left out of the
    metrics (``drop``, the SDLoRA repository's rule); its share is logged as ``out_of_class``."""

    lm_eval: ClassVar[str] = "label_words"
    max_new_tokens: ClassVar[int] = 4

    @property
    def objectives(self) -> tuple[str, ...]:
        """Classification; and for every task but STS-B (a score) the label-word causal LM."""
        return ("classification",) if self.is_regression else ("classification", "causal_lm")

    @property
    def lm_metrics(self) -> tuple[str, ...]:
        return self.metrics

    @property
    def submission(self) -> bool:
        """GLUE's unlabelled test splits, except under ``tvt`` (there ``test`` is the dev set)."""
        return self.protocol == "official"

    @property
    def test_split(self) -> bool:
        return self.protocol == "tvt"

    def metric_options(self, data_dir: str | None) -> dict | None:
        return None if self.is_regression else label_word_options(self)

    @property
    def spec(self) -> GlueSpec:
        return GLUE_SPECS[self.name]

    @property
    def folder(self) -> str:
        return self.spec.folder

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.spec.metrics

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return ("validation",) if self.protocol == "tvt" else self.spec.eval_splits

    @property
    def label_names(self) -> tuple[str, ...] | None:
        return self.spec.label_names

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def prediction_file(self, split: str) -> str:
        """GLUE's submission names (``SST-2.tsv``, ``MNLI-m.tsv``, ``AX.tsv``) for its unlabelled
        test splits only, so dev predictions never pass for (or overwrite) a submission file:
        dev splits are ``<folder>_<split>.tsv`` (``SST-2_validation.tsv``); under ``tvt`` every
        split is (``test`` is the dev set there)."""
        if self.protocol == "tvt":
            return f"{self.folder}_{split}.tsv"
        if split == AX_SPLIT:
            return "AX.tsv"
        suffixes = {"test": "", "test_matched": "-m", "test_mismatched": "-mm"}
        return f"{self.folder}{suffixes.get(split, f'_{split}')}.tsv"

    @property
    def test_splits(self) -> tuple[str, ...]:
        """The unlabelled test splits, one per evaluation split (``test``; MNLI
        ``test_matched``, ``test_mismatched``); MNLI's AX (:data:`AX_SPLIT`) comes on top when
        found (see :meth:`submission_splits`)."""
        return tuple(s.replace("validation", "test") for s in self.spec.eval_splits)

    def local_files(self) -> dict[str, str]:
        """Split name -> file name in the task folder (train and the official evaluation
        splits)."""
        files = {"train": "train.tsv"}
        for split in self.spec.eval_splits:
            files[split] = split.replace("validation", "dev") + ".tsv"
        return files

    def test_files(self, data_dir: str) -> dict[str, Path]:
        """Test split -> its file (``test.tsv``; MNLI ``test_matched.tsv``,
        ``test_mismatched.tsv``), present or not."""
        folder = self.task_dir(data_dir)
        return {split: folder / f"{split}.tsv" for split in self.test_splits}

    def ax_file(self, data_dir: str) -> Path | None:
        """MNLI: the diagnostic set's file (see :data:`AX_FILES`), or None when absent."""
        if self.name != "mnli":
            return None
        folder = self.task_dir(data_dir)
        root = Path(data_dir) if folder != Path(data_dir) else folder.parent  # GLUE root
        for base in dict.fromkeys((folder, root)):
            for name in AX_FILES:
                if (base / name).is_file():
                    return base / name
        return None

    def submission_splits(self, data_dir: str | None) -> tuple[str, ...]:
        """The unlabelled splits that ``data.predict_splits: test`` predicts: :attr:`test_splits`,
        and for MNLI the diagnostic set AX (from the hub always, locally when its file is found).

        Raises :class:`SsmloraError` naming every missing test file when ``data_dir`` lacks one.
        """
        if data_dir is None:
            return self.test_splits + ((AX_SPLIT,) if self.name == "mnli" else ())
        missing = [path for path in self.test_files(data_dir).values() if not path.is_file()]
        if missing:
            raise SsmloraError(
                f"data.predict_splits=test: {self.name} has no test file "
                f"{', '.join(str(p) for p in missing)}. Put GLUE's unlabelled test file(s) there "
                f"(the original layout: {self.folder}/"
                f"{{{', '.join(p.name for p in self.test_files(data_dir).values())}}}), set "
                f"data.data_dir: null to load {HUB_ID}'s test split from the hub, or use "
                "data.predict_splits: eval to predict the dev split(s)."
            )
        if self.name == "mnli" and self.ax_file(data_dir) is None:
            rank_zero_warn(
                f"No diagnostic set AX beside {self.task_dir(data_dir)} (looked for "
                f"{' and '.join(AX_FILES)} there and in the GLUE root): AX.tsv is not written. "
                "The GLUE server wants it in a full submission (predicted by the MNLI model)."
            )
            return self.test_splits
        return self.test_splits + ((AX_SPLIT,) if self.name == "mnli" else ())

    def task_dir(self, data_dir: str) -> Path:
        """``data_dir`` itself, or its ``<folder>`` subfolder when given the GLUE root."""
        root = Path(data_dir)
        return root / self.folder if (root / self.folder).is_dir() else root

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is None:
            return
        folder = self.task_dir(data_dir)
        files = self.local_files()
        eval_files = [files[s] for s in self.spec.eval_splits]
        if self.protocol == "tvt":  # its validation comes from train
            eval_files.append(files["train"])
        if not folder.is_dir() or not all((folder / f).is_file() for f in eval_files):
            raise SsmloraError(
                f"data.data_dir={data_dir!r} has no {self.name} files: expected "
                f"{folder}/{{{', '.join(files.values())}}} (the original GLUE TSV layout; train.tsv "
                "may be absent for validate/test, except under protocol tvt), or a GLUE root with a "
                f"{self.folder}/ folder. Set data.data_dir: null to load {HUB_ID} from the hub."
            )

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """Columns ``text_a``, ``text_b``, ``label`` (see :class:`~.base.Task`); a test split
        (unlabelled) has the placeholder label and the row's own index (see the module's doc).
        Under ``tvt``: ``train``/``validation`` cut from the official train, ``test`` the dev."""
        if self.protocol == "tvt":
            if split == "test":
                parts = [self._load_official(s, data_dir) for s in self.spec.eval_splits]
                return datasets.concatenate_datasets(parts)
            if split not in ("train", "validation"):
                raise SsmloraError(f"{self.name} (protocol tvt): unknown split {split!r}.")
            return tvt_split(self._load_official("train", data_dir), split)
        return self._load_official(split, data_dir)

    def _load_official(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """An official split (the hub's names) as ``text_a``, ``text_b``, ``label``."""
        if split in self.test_splits or split == AX_SPLIT:
            return self._load_test(split, data_dir)
        if data_dir is None:
            ds = datasets.load_dataset(HUB_ID, self.name, split=split)
            a, b = self.spec.hub_keys
            return ds.map(
                lambda ex: {"text_a": ex[a], "text_b": ex[b] if b else None, "label": ex["label"]},
                remove_columns=ds.column_names,
                features=self.features(),
            )
        path = self.task_dir(data_dir) / self.local_files()[split]
        if not path.is_file():
            raise SsmloraError(f"{self.name}: no file {path} for split {split!r}.")
        a, b, label = self.spec.tsv_keys
        return self._read_tsv(
            path,
            split,
            [c for c in (a, b, label) if c],
            lambda ex: {
                "text_a": ex[a],
                "text_b": ex[b] if b else None,
                "label": self.parse_label(ex[label]),
            },
            self.features(),
            "the original GLUE TSV",
            column_names=self.spec.tsv_columns,
        )

    def _read_tsv(
        self, path: Path, split: str, used: list[str], row, features, layout: str,
        column_names: tuple[str, ...] | None = None,
    ) -> datasets.Dataset:  # fmt: skip
        """The ``used`` columns of the TSV ``path`` as strings (quoting off), each row made an
        example by ``row``; ``column_names`` for a file without header (CoLA's train/dev)."""
        try:
            ds = datasets.load_dataset(
                "csv",
                data_files={split: str(path)},
                split=split,
                sep="\t",
                quoting=csv.QUOTE_NONE,
                header=None if column_names else "infer",
                column_names=list(column_names) if column_names else None,
                usecols=used,
                converters=dict.fromkeys(used, str),
                keep_default_na=False,
                encoding="utf-8-sig",  # MRPC's header starts with a byte-order mark
            )
            ds = ds.map(row, remove_columns=ds.column_names, features=features)
        except Exception as err:  # pandas/pyarrow/label/index errors from a malformed file
            raise SsmloraError(
                f"{self.name}: cannot read {path} as {layout} (columns "
                f"{list(column_names or used)}, tab-separated, no quoting): {err}"
            ) from None
        if len(ds) == 0:
            raise SsmloraError(f"{self.name}: {path} has no rows.")
        return ds

    def _load_test(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """An unlabelled test split: ``text_a``, ``text_b``, ``label`` (:data:`UNLABELLED`) and
        :data:`INDEX_COLUMN` (the file's index column, the hub's ``idx``)."""
        placeholder = float(UNLABELLED) if self.is_regression else UNLABELLED
        if data_dir is None:
            if split == AX_SPLIT:
                ds = datasets.load_dataset(HUB_ID, "ax", split="test")
            else:
                ds = datasets.load_dataset(HUB_ID, self.name, split=split)
            a, b = self.spec.hub_keys
            return ds.map(
                lambda ex: {
                    "text_a": ex[a],
                    "text_b": ex[b] if b else None,
                    "label": placeholder,
                    INDEX_COLUMN: ex["idx"],
                },
                remove_columns=ds.column_names,
                features=self.features(test=True),
            )
        path = self.ax_file(data_dir) if split == AX_SPLIT else self.test_files(data_dir)[split]
        if path is None or not path.is_file():
            raise SsmloraError(f"{self.name}: no file {path} for split {split!r}.")
        a, b, _ = self.spec.tsv_keys  # the test files name their text columns as train/dev do
        with open(path, encoding="utf-8-sig") as handle:
            header = handle.readline().rstrip("\r\n").split("\t")
        index = next((c for c in TEST_INDEX_COLUMNS if c in header), None)
        wanted = [c for c in (a, b) if c]
        absent = [c for c in wanted if c not in header] + ([] if index else ["index"])
        if absent:
            raise SsmloraError(
                f"{self.name}: {path} is not a GLUE test TSV: it lacks the column(s) {absent} "
                f"(its header: {header}). The test files have a header with an index column "
                f"({' or '.join(TEST_INDEX_COLUMNS)}) and {wanted}."
            )
        return self._read_tsv(
            path,
            split,
            [index, *wanted],
            lambda ex: {
                "text_a": ex[a],
                "text_b": ex[b] if b else None,
                "label": placeholder,
                INDEX_COLUMN: int(ex[index]),
            },
            self.features(test=True),
            f"a GLUE test TSV with an integer {index!r}",
        )

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """The causal-LM rows: the label-word format of :mod:`~.glue_sdlora`."""
        if self.is_regression:
            raise SsmloraError(
                f"{self.name} is scored as a number: use data.objective classification."
            )
        return label_word_rows(self, self.load_split(split, data_dir))

    def parse_label(self, value: str) -> int | float:
        if self.is_regression:
            return float(value)
        if self.label_names is not None:
            return self.label_names.index(value)
        return int(value)

    def features(self, test: bool = False) -> datasets.Features:
        label = datasets.Value("float32" if self.is_regression else "int64")
        features = {
            "text_a": datasets.Value("string"),
            "text_b": datasets.Value("string"),
            "label": label,
        }
        if test:
            features[INDEX_COLUMN] = datasets.Value("int64")
        return datasets.Features(features)


for _name in GLUE_SPECS:
    register_task(_name, partial(GlueTask, _name))
