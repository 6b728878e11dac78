"""The typed batches the objectives' collators build and their model steps read.

Dataclasses, so Lightning moves every tensor field to the device (``apply_to_collection``) and the
fields say what each step may read, with their shapes, instead of string keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor


class TensorBatch:
    """Shared behaviour of the batch dataclasses: pinned memory for faster host-to-GPU copies."""

    def pin_memory(self):
        """A copy with every tensor field pinned (the DataLoader calls it with ``pin_memory``)."""
        changes = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Tensor | TensorBatch):
                changes[field.name] = value.pin_memory()
            elif isinstance(value, dict):
                changes[field.name] = {k: v.pin_memory() for k, v in value.items()}
        return dataclasses.replace(self, **changes)


@dataclass
class ClassificationBatch(TensorBatch):
    """A batch for a sequence-classification (or regression) head."""

    inputs: dict[str, Tensor]
    """The padded tokenizer outputs the model takes (``input_ids``, ``attention_mask``,
    ``token_type_ids``, ...), each ``(B, L)``."""
    labels: Tensor | None
    """``(B,)`` class ids (int64), or scores (float32) for regression; None for an unlabelled
    split (a benchmark's test set)."""
    groups: Tensor | None = None
    """``(B,)`` group ids of a grouped task (MultiRC's questions); the model never sees them."""

    @property
    def size(self) -> int:
        return self.inputs["input_ids"].shape[0]


@dataclass
class ChoiceInputs(TensorBatch):
    """Every example's answer options, each appended to the example's context: ``B·K`` rows for
    ``B`` examples of ``K`` options (``K`` may differ per example)."""

    input_ids: Tensor
    """``(B·K, L)`` context + option, right-padded."""
    attention_mask: Tensor
    """``(B·K, L)``."""
    labels: Tensor
    """``(B·K, L)``: the option's tokens, -100 elsewhere (its log-likelihood is the score)."""
    num_choices: Tensor
    """``(B,)`` options per example, in row order."""


@dataclass
class PromptInputs(TensorBatch):
    """The contexts answers are generated from, without their targets."""

    ids: Tensor
    """``(B, P)`` right-padded."""
    lengths: Tensor
    """``(B,)`` real tokens of each prompt."""
    target_lengths: Tensor | None = None
    """``(B,)`` target tokens after each prompt (teacher-forced prediction's default length)."""


@dataclass
class LMBatch(TensorBatch):
    """A causal-LM batch: the full sequences (context + target) for the loss, and what the
    evaluation of the objective reads."""

    input_ids: Tensor
    """``(B, L)`` context + target, right-padded."""
    attention_mask: Tensor
    """``(B, L)``."""
    labels: Tensor
    """``(B, L)``: the target tokens, -100 elsewhere (the loss covers the target only)."""
    gold: Tensor | None = None
    """``(B,)`` index of the gold option (multiple choice)."""
    choices: ChoiceInputs | None = None
    """The options (multiple-choice evaluation)."""
    prompts: PromptInputs | None = None
    """The contexts alone (generation)."""
    references: list[list[str]] | None = None
    """Reference answers per example (generation metrics)."""
    groups: Tensor | None = None
    """``(B,)`` group ids of a grouped task."""

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class ChoiceBatch(TensorBatch):
    """A batch for a multiple-choice head: every option of an example paired with its context,
    all examples with the same number of options ``K``."""

    inputs: dict[str, Tensor]
    """The padded tokenizer outputs, each ``(B, K, L)`` (``input_ids``, ``attention_mask``,
    ``token_type_ids``, ...)."""
    labels: Tensor
    """``(B,)`` index of the gold option."""
    levels: Tensor | None = None
    """``(B,)`` level ids of a task scored per level (RACE: middle 0, high 1); the model never
    sees them."""

    @property
    def size(self) -> int:
        return self.inputs["input_ids"].shape[0]


@dataclass
class SpanBatch(TensorBatch):
    """An extractive-QA batch: windows (features) of question + context, ``B`` of them, from one
    or several examples (a long context gives several overlapping windows)."""

    inputs: dict[str, Tensor]
    """The padded tokenizer outputs, each ``(B, L)``."""
    start_positions: Tensor
    """``(B,)`` the answer's first token in the window; 0 (the first token, [CLS]) when the
    window does not hold the answer (or the question has none)."""
    end_positions: Tensor
    """``(B,)`` the answer's last token, as ``start_positions``."""
    feature: Tensor | None = None
    """``(B,)`` each window's row in the encoded split (evaluation, prediction)."""
    example: Tensor | None = None
    """``(B,)`` each window's question: its row in the split as loaded."""
    offsets: Tensor | None = None
    """``(B, L, 2)`` each token's character span in the context; -1 for tokens outside it (the
    question, special tokens, padding)."""
    examples: list[tuple[int, str, str, tuple[str, ...]]] | None = None
    """The windows' questions, one entry per question: (example row, question id, context,
    reference answers)."""

    @property
    def size(self) -> int:
        return self.inputs["input_ids"].shape[0]
