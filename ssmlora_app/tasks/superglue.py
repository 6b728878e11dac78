"""SuperGLUE (BoolQ, CB, COPA, MultiRC, RTE, WiC, WSC) from the hub (``aps/super_glue``) or from
local JSONL files in the original layout (``<Task>/{train,val}.jsonl``).

Each task serves both objectives: ``classification`` (text pair -> class, the SSMLoRA paper's
LLaMA set-up with a classification head) and ``causal_lm`` (a prompt and answer options scored by
log-likelihood, arg-max). Test labels are hidden, so ``test`` evaluates the validation set, as the
papers report. MultiRC is classified per answer option and reports SuperGLUE's metrics: F1a
(``f1``: binary F1 over all options), EM (``exact_match``: the fraction of questions whose options
are all classified right) and the per-option ``accuracy``; each option carries its question's id
(``group``, from the ``idx`` pair paragraph/question) for EM. With ``data.max_eval_samples`` EM
scores each drawn question over its drawn options. The records are first normalised to the hub's
field names and integer labels (``entailment``=0 for CB/RTE, True=1 for BoolQ/WiC/WSC), MultiRC's
with the hub's ``idx`` ({paragraph, question, answer}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal

import datasets

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import GROUP_COLUMN, Task
from ssmlora_app.tasks.registry import register_task

HUB_ID = "aps/super_glue"
LOCAL_FILES = {"train": "train.jsonl", "validation": "val.jsonl"}


def _flatten_multirc(example: dict, line: int) -> list[dict]:
    """An original MultiRC line (a passage with questions with answers) -> one record per answer,
    with the hub's ``idx`` ({paragraph, question, answer}, from the line's own ``idx`` fields).

    ``line`` (0-based) numbers a passage without an ``idx``, as the position in the passage
    numbers a question (in the question, an answer) without one.
    """
    passage = example["passage"]
    paragraph = example.get("idx", line)
    records = []
    for q, question in enumerate(passage["questions"]):
        for a, answer in enumerate(question["answers"]):
            records.append(
                {
                    "paragraph": passage["text"],
                    "question": question["question"],
                    "answer": answer["text"],
                    "label": int(answer["label"]),
                    "idx": {
                        "paragraph": paragraph,
                        "question": question.get("idx", q),
                        "answer": answer.get("idx", a),
                    },
                }
            )
    return records


def _question_groups(records: list[dict]) -> list[int]:
    """MultiRC: the group id of each answer-option record: its question, the ``idx`` pair
    (paragraph, question), numbered 0, 1, ... in order of first appearance."""
    ids: dict[tuple[int, int], int] = {}
    return [
        ids.setdefault((r["idx"]["paragraph"], r["idx"]["question"]), len(ids)) for r in records
    ]


def _normalise_local(task: str, example: dict, line: int) -> list[dict]:
    """An original SuperGLUE JSONL record (``line``: its 0-based line) -> records with the hub's
    fields and integer labels."""
    if task == "multirc":
        return _flatten_multirc(example, line)
    record = dict(example)
    label = record.get("label")
    if task in ("cb", "rte") and isinstance(label, str):
        names = (
            ("entailment", "contradiction", "neutral")
            if task == "cb"
            else ("entailment", "not_entailment")
        )
        record["label"] = names.index(label)
    elif isinstance(label, bool):
        record["label"] = int(label)
    if task == "wsc":
        record.update({k: v for k, v in record.pop("target").items()})
    return [record]


def classification_pair(task: str, r: dict) -> tuple[str, str]:
    """The (text_a, text_b) pair of a record for a classification head."""
    if task == "boolq":
        return r["question"], r["passage"]
    if task in ("cb", "rte"):
        return r["premise"], r["hypothesis"]
    if task == "copa":
        connector = (
            "What was the cause?" if r["question"] == "cause" else "What happened as a result?"
        )
        return f"{r['premise']} {connector}", f"{r['choice1']} || {r['choice2']}"
    if task == "wic":
        return f"{r['word']}: {r['sentence1']}", r["sentence2"]
    if task == "wsc":
        return r["text"], f"{r['span2_text']} refers to {r['span1_text']}"
    return r["paragraph"], f"{r['question']} {r['answer']}"  # multirc


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def lm_example(task: str, r: dict) -> tuple[str, str, list[str]]:
    """``(document, prompt, choices)`` of a record for causal-LM scoring; choice i is class i."""
    if task == "boolq":
        return r["passage"], f"\n\nQuestion: {r['question']}?\nAnswer:", [" no", " yes"]
    if task == "cb":
        prompt = f"{r['premise']}\nQuestion: {r['hypothesis']} True, False or Neither?\nAnswer:"
        return "", prompt, [" True", " False", " Neither"]
    if task == "rte":
        prompt = f"{r['premise']}\nQuestion: {r['hypothesis']} True or False?\nAnswer:"
        return "", prompt, [" True", " False"]
    if task == "copa":
        connector = " because" if r["question"] == "cause" else " therefore"
        prompt = r["premise"].rstrip(".") + connector
        return "", prompt, [" " + _lower_first(r["choice1"]), " " + _lower_first(r["choice2"])]
    if task == "wic":
        prompt = (
            f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\nQuestion: Is the word "
            f"'{r['word']}' used in the same way in the two sentences above?\nAnswer:"
        )
        return "", prompt, [" no", " yes"]
    if task == "wsc":
        prompt = (
            f"Passage: {r['text']}\nQuestion: In the passage above, does the pronoun "
            f'"{r["span2_text"]}" refer to "{r["span1_text"]}"?\nAnswer:'
        )
        return "", prompt, [" no", " yes"]
    prompt = f"\n\nQuestion: {r['question']}\nAnswer: {r['answer']}\nIs the answer correct?"
    return r["paragraph"], prompt, [" no", " yes"]  # multirc


@dataclass(frozen=True)
class SuperGlueSpec:
    """The fixed facts of one SuperGLUE task."""

    key: str
    """Task key: boolq, cb, copa, multirc, rte, wic or wsc."""
    folder: str
    """Folder name in the original layout (``BoolQ``)."""
    hub_config: str
    """Config name of ``aps/super_glue`` (``wsc.fixed`` for WSC)."""
    num_labels: int
    metrics: tuple[str, ...]


SUPERGLUE_SPECS: dict[str, SuperGlueSpec] = {
    "boolq": SuperGlueSpec("boolq", "BoolQ", "boolq", 2, ("accuracy",)),
    "cb": SuperGlueSpec("cb", "CB", "cb", 3, ("accuracy", "macro_f1")),
    "copa": SuperGlueSpec("copa", "COPA", "copa", 2, ("accuracy",)),
    "multirc": SuperGlueSpec("multirc", "MultiRC", "multirc", 2, ("f1", "accuracy", "exact_match")),
    "superglue_rte": SuperGlueSpec("rte", "RTE", "rte", 2, ("accuracy",)),
    "wic": SuperGlueSpec("wic", "WiC", "wic", 2, ("accuracy",)),
    "wsc": SuperGlueSpec("wsc", "WSC", "wsc.fixed", 2, ("accuracy",)),
}
"""The seven SuperGLUE tasks by name (RTE as ``superglue_rte``, apart from GLUE's)."""

SuperGlueName = Literal["boolq", "cb", "copa", "multirc", "superglue_rte", "wic", "wsc"]


@dataclass(frozen=True)
class SuperGlueTask(Task):
    """One SuperGLUE task, from the hub (``aps/super_glue``) or local JSONL files in the original
    layout (``<Task>/{train,val}.jsonl``). Short form: the name alone (``data.task: boolq``)."""

    name: SuperGlueName = "boolq"
    """Which SuperGLUE task."""

    lm_eval: ClassVar[str] = "choice"

    @property
    def objectives(self) -> tuple[str, ...]:
        """COPA's two options are also scored jointly by an encoder (``multiple_choice``)."""
        both = ("classification", "causal_lm")
        return (*both, "multiple_choice") if self.key == "copa" else both

    @property
    def spec(self) -> SuperGlueSpec:
        return SUPERGLUE_SPECS[self.name]

    @property
    def key(self) -> str:
        return self.spec.key

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
    def lm_metrics(self) -> tuple[str, ...]:
        return self.metrics

    @property
    def grouped(self) -> bool:
        """MultiRC: the answer options of one question form a group (``exact_match``)."""
        return self.key == "multirc"

    def task_dir(self, data_dir: str) -> Path:
        root = Path(data_dir)
        return root / self.folder if (root / self.folder).is_dir() else root

    def check_data_dir(self, data_dir: str | None) -> None:
        if data_dir is None:
            return
        folder = self.task_dir(data_dir)
        if not (folder / LOCAL_FILES["validation"]).is_file():
            raise SsmloraError(
                f"data.data_dir={data_dir!r} has no {self.folder}/val.jsonl: give the SuperGLUE root "
                f"(with {self.folder}/{{train,val}}.jsonl) or the task folder; data.data_dir: null "
                f"loads {HUB_ID} from the hub."
            )

    def records(self, split: str, data_dir: str | None) -> list[dict]:
        """The split's records in the hub's layout; a grouped task's carry ``group`` (int)."""
        if split not in LOCAL_FILES:
            raise SsmloraError(f"{self.name}: unknown split {split!r} (train or validation).")
        if data_dir is None:
            records = list(datasets.load_dataset(HUB_ID, self.spec.hub_config, split=split))
        else:
            path = self.task_dir(data_dir) / LOCAL_FILES[split]
            if not path.is_file():
                raise SsmloraError(f"{self.name}: no file {path} for split {split!r}.")
            with open(path, encoding="utf-8") as handle:
                lines = [json.loads(line) for line in handle if line.strip()]
            records = [
                r for i, line in enumerate(lines) for r in _normalise_local(self.key, line, i)
            ]
        if self.grouped:
            for r, group in zip(records, _question_groups(records), strict=True):
                r[GROUP_COLUMN] = group
        return records

    def load_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        rows = []
        for r in self.records(split, data_dir):
            a, b = classification_pair(self.key, r)
            rows.append({"text_a": a, "text_b": b, "label": int(r["label"])})
            if self.grouped:
                rows[-1][GROUP_COLUMN] = r[GROUP_COLUMN]
        return datasets.Dataset.from_list(rows)

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        rows = []
        for r in self.records(split, data_dir):
            document, prompt, choices = lm_example(self.key, r)
            label = int(r["label"])
            rows.append(
                {
                    "document": document,
                    "prompt": prompt,
                    "target": choices[label],
                    "choices": choices,
                    "label": label,
                    "references": [],
                }
            )
            if self.grouped:
                rows[-1][GROUP_COLUMN] = r[GROUP_COLUMN]
        return datasets.Dataset.from_list(rows)

    def load_choice_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        """COPA: the premise, the question it asks and the two alternatives."""
        if self.key != "copa":
            return super().load_choice_split(split, data_dir)
        rows = []
        for r in self.records(split, data_dir):
            question = (
                "What was the cause?" if r["question"] == "cause" else "What happened as a result?"
            )
            rows.append({"context": r["premise"], "question": question,
                         "choices": [r["choice1"], r["choice2"]], "label": int(r["label"])})  # fmt: skip
        return datasets.Dataset.from_list(rows)

    def builtin_tokenizer(self):
        from ssmlora_app.tasks.vocab import byte_tokenizer

        return byte_tokenizer()


for _name in SUPERGLUE_SPECS:
    register_task(_name, partial(SuperGlueTask, _name))
