"""Extractive question answering (SQuAD): a span head (``*ForQuestionAnswering``: a linear
``qa_outputs`` giving every token a start and an end logit) on question + context windows.

Training: cross-entropy of the answer's first and last tokens in each window (the [CLS] token for a
window without the answer), the model's own loss. Evaluation: each window's best span
(:func:`~ssmlora_app.objectives.span_answers.window_spans`), gathered over the whole split and
post-processed at the epoch's end into one answer per question, scored by the official scripts
(:class:`~ssmlora_app.objectives.span_answers.SquadScore`). ``ssmlora predict`` writes one
record per question (``{"index", "id", "prediction", "label", "references"[, "na_prob"]}``) and
the official files: ``<task>_<split>_predictions.json`` (``{id: answer}``, the input of
``evaluate-v1.1.py`` / ``evaluate-v2.0.py``) and, for v2.0, ``<task>_<split>_na_prob.json``
(``--na-prob-file``).
"""

from __future__ import annotations

import datasets
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import (
    AutoModelForQuestionAnswering,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ssmlora_app.backbone import BackboneConfig, build_with_head
from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives.base import Objective, Stage, register_objective
from ssmlora_app.objectives.batches import SpanBatch
from ssmlora_app.objectives.span_answers import SquadScore, select_answers, window_spans
from ssmlora_app.objectives.span_features import FEATURE_COLUMNS, OUTSIDE, encode_split
from ssmlora_app.tasks.base import Task

POSITIONS = ("start_positions", "end_positions")
DEFAULT_OPTIONS = {"version_2": False, "max_answer_length": 30, "n_best_size": 20,
                   "null_score_diff_threshold": 0.0}  # fmt: skip
"""The post-processing options when the task info records none (``run_qa.py``'s defaults)."""


class SpanCollator:
    """Pads the windows' token columns; evaluation and prediction batches also carry each
    window's rows, offsets (padded with -1) and its question's texts."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, evaluation: bool):
        self.pad = DataCollatorWithPadding(tokenizer)
        self.evaluation = evaluation

    def __call__(self, rows: list[dict]) -> SpanBatch:
        set_apart = (*POSITIONS, *FEATURE_COLUMNS)
        inputs = dict(self.pad([{k: v for k, v in r.items() if k not in set_apart} for r in rows]))
        batch = SpanBatch(
            inputs=inputs,
            start_positions=torch.tensor([r["start_positions"] for r in rows]),
            end_positions=torch.tensor([r["end_positions"] for r in rows]),
        )
        if not self.evaluation:
            return batch
        length = inputs["input_ids"].shape[1]
        offsets = torch.full((len(rows), length, 2), OUTSIDE, dtype=torch.long)
        for b, row in enumerate(rows):
            pairs = torch.tensor(row["offsets"], dtype=torch.long).view(-1, 2)
            offsets[b, : len(pairs)] = pairs
        batch.feature = torch.tensor([r["feature"] for r in rows])
        batch.example = torch.tensor([r["example"] for r in rows])
        batch.offsets = offsets
        questions = {r["example"]: (r["id"], r["context"], tuple(r["answers"])) for r in rows}
        batch.examples = [(row, *texts) for row, texts in questions.items()]
        return batch


@register_objective
class ExtractiveQA(Objective):
    """Answer spans of a question in its context (see the module docstring)."""

    name = "extractive_qa"
    family = "extractive_qa"

    @property
    def options(self) -> dict:
        """The post-processing options (:meth:`SquadTask.metric_options`)."""
        return {**DEFAULT_OPTIONS, **(self.info.metric_options or {})}

    def build_model(
        self, backbone: BackboneConfig, load_kwargs: dict | None = None
    ) -> PreTrainedModel:
        info = self.info
        return build_with_head(
            AutoModelForQuestionAnswering, backbone, info.vocab_size, info.pad_token_id,
            load_kwargs=load_kwargs,
        )  # fmt: skip

    def length_note(self) -> str:
        return ", the question and the context window together"

    # Data.
    def load_split(self, task: Task, split: str, data_dir: str | None) -> datasets.Dataset:
        return task.load_qa_split(split, data_dir)

    def encode(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, task: Task, desc: str
    ) -> datasets.Dataset:
        stride = getattr(task, "doc_stride", None)
        if stride is None:
            raise SsmloraError(f"Task {task.name!r} gives no doc_stride for extractive QA.")
        return encode_split(ds, tokenizer, self.info.max_length, stride, desc)

    def collator(self, tokenizer: PreTrainedTokenizerBase, stage: Stage) -> SpanCollator:
        return SpanCollator(tokenizer, evaluation=stage != "train")

    # Steps.
    def metrics(self, prefix: str) -> MetricCollection:
        options = self.options
        scores = {
            key: SquadScore(key, options["version_2"], options["null_score_diff_threshold"])
            for key in self.info.metrics
        }
        # Each score keeps its own questions' texts: no compute groups sharing only the tensors.
        return MetricCollection(scores, prefix=f"{prefix}/", compute_groups=False)

    def _spans(self, batch: SpanBatch, out) -> object:
        options = self.options
        return window_spans(
            out.start_logits, out.end_logits, batch.offsets, batch.inputs["attention_mask"],
            options["n_best_size"], options["max_answer_length"],
        )  # fmt: skip

    def training_loss(self, model: nn.Module, batch: SpanBatch) -> Tensor:
        return model(**batch.inputs, start_positions=batch.start_positions,
                     end_positions=batch.end_positions).loss  # fmt: skip

    def evaluate(self, model: nn.Module, batch: SpanBatch, metrics: MetricCollection) -> Tensor:
        out = model(**batch.inputs, start_positions=batch.start_positions,
                    end_positions=batch.end_positions)  # fmt: skip
        spans = self._spans(batch, out)
        metrics.update(spans, feature=batch.feature, example=batch.example,
                       examples=batch.examples)  # fmt: skip
        return out.loss

    def predict(self, model: nn.Module, batch: SpanBatch) -> list[tuple]:
        """Each window's best span: ``(start_char, end_char, score, null_score)``."""
        spans = self._spans(batch, model(**batch.inputs))
        columns = (spans.start_char, spans.end_char, spans.score, spans.null_score)
        return list(zip(*(c.tolist() for c in columns), strict=True))

    # Records.
    def records(
        self, values: list, order: list[int], dataset: datasets.Dataset | None
    ) -> list[dict]:
        """One record per question, in the split's order, from the windows this process
        predicted (a question's windows must all be predicted by one process)."""
        if dataset is None:
            raise SsmloraError("Extractive QA predictions need the encoded split.")
        examples, ids = list(dataset["example"]), list(dataset["id"])
        contexts, references = list(dataset["context"]), list(dataset["answers"])
        window_of = {examples[i]: i for i in order}  # question row -> one of its windows
        columns = list(zip(*values, strict=True)) if values else [[]] * 4
        options = self.options
        answers = select_answers(
            feature=order, example=[examples[i] for i in order], start_char=columns[0],
            end_char=columns[1], score=columns[2], null_score=columns[3],
            contexts={e: contexts[i] for e, i in window_of.items()},
            version_2=options["version_2"], threshold=options["null_score_diff_threshold"],
        )  # fmt: skip
        records = []
        for e in sorted(answers):
            refs = list(references[window_of[e]])
            record = {"index": e, "id": ids[window_of[e]], "prediction": answers[e].text,
                      "label": refs[0] if refs else "", "references": refs}  # fmt: skip
            if options["version_2"]:
                record["na_prob"] = answers[e].na_prob
            records.append(record)
        return records

    def prediction_files(self, records: list[dict]) -> dict[str, object]:
        """The official files: ``predictions.json`` (``{id: answer}``) and, for v2.0,
        ``na_prob.json`` (``{id: no-answer probability}``)."""
        files: dict[str, object] = {"predictions.json": {r["id"]: r["prediction"] for r in records}}
        if self.options["version_2"]:
            files["na_prob.json"] = {r["id"]: r["na_prob"] for r in records}
        return files
