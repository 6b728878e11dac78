"""The objective: everything that depends on *how* a task is learned and scored, in one object.

The data module chooses it once, from the task and ``data.objective`` (:func:`resolve_objective`),
and records its name in :class:`~ssmlora_app.tasks.TaskInfo`; the module (and ``ssmlora export``)
rebuild it from that record (:func:`objective_for`). It owns:

* the model: which head, built through the one model factory (:mod:`ssmlora_app.backbone`);
* the data: which rows a task gives (``load_split``), their encoding and their collation into a
  typed batch (:mod:`ssmlora_app.objectives.batches`);
* the steps: the training loss, evaluation (metrics updated per batch; a metric that needs all of
  a split's outputs, such as grouped exact match or an n-best post-processing, keeps them in
  ``cat`` states and computes at the epoch's end, DDP-safe), prediction;
* the records ``ssmlora predict`` writes.

Adding an objective is one file defining a subclass plus one import line in
``ssmlora_app/objectives/__init__.py``; the class registers itself with :func:`register_objective`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import datasets
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task, TaskInfo
from ssmlora_app.tasks.metrics import build_metrics

Stage = Literal["train", "eval", "predict"]

ROTARY_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "gemma", "phi3")
"""Backbones with rotary positions: ``max_position_embeddings`` is a trained length, not a hard
limit, so longer inputs are allowed (long-context fine-tuning)."""


class Objective(ABC):
    """How one task is learned and scored (see the module docstring). Built from the task's
    :class:`TaskInfo`; subclasses declare which task family they serve."""

    name: ClassVar[str]
    """Registry name, stored in ``TaskInfo.objective`` (``classification``, ``lm_choice``, ...)."""
    family: ClassVar[str]
    """What ``data.objective`` and a task's ``objectives`` call it (``classification``,
    ``causal_lm``)."""
    evaluation: ClassVar[str | None] = None
    """Within a family, the task's evaluation mode this objective serves (``Task.lm_eval``);
    None: the family's only objective."""
    generates: ClassVar[bool] = False
    """It writes answers with ``generate`` (so ``data.num_beams`` / ``min_new_tokens`` apply)."""

    def __init__(self, info: TaskInfo):
        self.info = info
        self.tokenizer: PreTrainedTokenizerBase | None = None
        """The data's tokenizer, once :meth:`attach` gave it (decoding generated text)."""

    def attach(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        self.tokenizer = tokenizer

    # What the data module asks before the task info exists.
    @classmethod
    def task_metrics(cls, task: Task) -> tuple[str, ...]:
        """The metric names of ``task`` under this objective (the first is the headline)."""
        return task.metrics

    @classmethod
    def answer_tokens(cls, task: Task, requested: int | None) -> int:
        """``TaskInfo.max_new_tokens`` for ``data.max_new_tokens=requested`` (None: the task's)."""
        return 0

    @classmethod
    def prepare_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> None:
        """Adjust the tokenizer in place before anything is encoded (e.g. a pad token)."""
        return None

    # The model.
    @abstractmethod
    def build_model(
        self, backbone: BackboneConfig, load_kwargs: dict | None = None
    ) -> PreTrainedModel:
        """The backbone with this objective's head, through :mod:`ssmlora_app.backbone`."""

    def length_note(self) -> str:
        """What ``data.max_length`` includes beyond the input, for the positions check."""
        return ""

    def check_lengths(self, model: nn.Module, extra: int = 0) -> None:
        """Refuse, before training, inputs longer than the backbone's position embeddings.

        ``data.max_length`` bounds every sequence the model sees (generated tokens included);
        ``extra`` positions come in front of every input (an adapter's virtual tokens).
        """
        config, info = model.config, self.info
        positions = getattr(config, "max_position_embeddings", None)
        if not isinstance(positions, int) or info.max_length is None:
            return  # no learned positions (Mamba, rotary models report a limit they can exceed)
        if config.model_type in ("roberta", "xlm-roberta", "camembert"):
            positions -= (config.pad_token_id or 0) + 1  # RoBERTa's positions start after the pad
        if info.max_length + extra > positions and config.model_type not in ROTARY_MODEL_TYPES:
            plus = f" plus the adapter's {extra} virtual tokens" if extra else ""
            raise SsmloraError(
                f"data.max_length={info.max_length}{plus} exceeds the {positions} positions of "
                f"the {config.model_type} backbone: lower data.max_length (inputs are truncated "
                f"to it{self.length_note()}) or use a longer-context backbone."
            )

    # The data.
    @abstractmethod
    def load_split(self, task: Task, split: str, data_dir: str | None) -> datasets.Dataset:
        """The task's rows of ``split`` in the layout this objective encodes."""

    @abstractmethod
    def encode(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, task: Task, desc: str
    ) -> datasets.Dataset:
        """Token ids (and whatever the collator needs) for every row of ``ds``, a split of
        ``task`` (``desc`` names it in messages)."""

    @abstractmethod
    def collator(self, tokenizer: PreTrainedTokenizerBase, stage: Stage) -> Callable[[list], Any]:
        """Rows of :meth:`encode` -> one typed batch, for training, evaluation or prediction."""

    def gold_labels(self, ds: datasets.Dataset) -> list | None:
        """Each example's class (or gold option) for the majority baseline; None where chance
        is no single class (regression, generation)."""
        return None

    # The steps.
    def metrics(self, prefix: str) -> MetricCollection:
        """A fresh metric collection, logged as ``{prefix}/{name}``."""
        info = self.info
        return build_metrics(
            info.metrics, info.num_labels, prefix, info.grouped, info.metric_options
        )

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The scalar loss of one training batch."""

    @abstractmethod
    def evaluate(self, model: nn.Module, batch: Any, metrics: MetricCollection) -> Tensor:
        """Update ``metrics`` with one evaluation batch; returns its loss."""

    @abstractmethod
    def predict(self, model: nn.Module, batch: Any) -> Tensor | list:
        """One prediction per example: a ``(B,)`` tensor or a list (e.g. generated texts)."""

    @abstractmethod
    def records(
        self, values: list, order: list[int], dataset: datasets.Dataset | None
    ) -> list[dict]:
        """``ssmlora predict``'s records, one ``{"index", "prediction"[, "label", ...]}`` per
        example in dataset order; ``values`` are the predictions in ``order`` (dataset indices),
        ``dataset`` the split as encoded (None: no gold labels)."""

    def prediction_files(self, records: list[dict]) -> dict[str, object]:
        """Files ``ssmlora predict`` writes beside the records of a split, in an official
        evaluator's format: name suffix (``predictions.json``) -> JSON value; none by default."""
        return {}


_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make ``cls`` known by its ``name``."""
    _OBJECTIVES[cls.name] = cls
    return cls


def objective_for(info: TaskInfo) -> Objective:
    """The objective a task info records, ready to use."""
    try:
        return _OBJECTIVES[info.objective](info)
    except KeyError:
        raise SsmloraError(
            f"Unknown objective {info.objective!r}; known: {sorted(_OBJECTIVES)}."
        ) from None


def resolve_objective(family: str | None, task: Task) -> type[Objective]:
    """The objective class for ``task`` learned as ``family`` (``data.objective``; None: the
    task's first). Raises :class:`SsmloraError` for a family the task does not support."""
    supported = tuple(task.objectives)
    family = family or supported[0]
    if family not in supported:
        raise SsmloraError(
            f"Task {task.name!r} supports data.objective in {list(supported)}, not {family!r}."
        )
    for cls in _OBJECTIVES.values():
        if cls.family == family and cls.evaluation in (None, task.lm_eval):
            return cls
    raise SsmloraError(f"No objective learns {family!r} with evaluation {task.lm_eval!r}.")
