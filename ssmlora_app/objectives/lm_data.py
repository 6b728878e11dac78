"""Causal-LM examples: prompt + target encoding, the one truncation policy, and the collator.

A sequence is ``[bos] + document + prompt + target (+ eos)``; the loss (``labels``) covers the
target tokens only. The prompt (question, answer options, answer cue) and the target or options are
never cut: when the sequence exceeds ``max_length``, only the document loses tokens, by the same
policy for every method (default ``middle``: keep its beginning and its end, cut the middle; the end
of the document sits right before the question). The room kept for the answer is the same for
training and evaluation (the longest option, or ``max_new_tokens`` for generation), so a model sees
the same document view in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives.batches import ChoiceInputs, LMBatch, PromptInputs
from ssmlora_app.tasks.base import GROUP_COLUMN

TRUNCATION_POLICIES = ("middle", "tail", "head")
IGNORE = -100


def cut_document(ids: list[int], budget: int, policy: str = "middle") -> list[int]:
    """Shorten ``ids`` to at most ``budget`` tokens.

    ``middle`` keeps the first ``budget // 2`` and the last ``budget - budget // 2`` tokens;
    ``tail`` keeps the last ``budget`` (the end of the document, next to the question); ``head``
    keeps the first ``budget``.
    """
    if policy not in TRUNCATION_POLICIES:
        raise SsmloraError(
            f"Unknown truncation policy {policy!r}; use one of {', '.join(TRUNCATION_POLICIES)}."
        )
    if len(ids) <= budget:
        return list(ids)
    if budget <= 0:
        return []
    if policy == "tail":
        return list(ids[len(ids) - budget :])
    if policy == "head":
        return list(ids[:budget])
    head = budget // 2
    return list(ids[:head]) + list(ids[len(ids) - (budget - head) :])


@dataclass(frozen=True)
class LMFormat:
    """How rows become token ids (one per objective)."""

    max_length: int
    """Longest sequence fed to the model, answer included."""
    truncation: str = "middle"
    """Policy for the document when the sequence is too long (see :func:`cut_document`)."""
    answer_room: int | None = None
    """Tokens kept for a generated answer (``max_new_tokens`` of a generation objective); longer
    training targets are cut at the end. None: the room is the longest option, or the target."""


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_lm_example(row: dict, tokenizer: PreTrainedTokenizerBase, fmt: LMFormat) -> dict:
    """One row (the causal-LM columns of :data:`~ssmlora_app.tasks.base.LM_COLUMNS`) -> model
    inputs.

    Returns ``input_ids``/``labels`` (context + target, loss on the target only), and for
    evaluation ``choice_input_ids``/``choice_labels`` (one sequence per option), ``prompt_ids``
    (the context alone, for generation).
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt = _ids(tokenizer, row["prompt"])
    target = list(row["target_ids"]) if row.get("target_ids") else _ids(tokenizer, row["target"])
    choices = [_ids(tokenizer, c) for c in row["choices"]]
    full_target = len(target) + len(eos)
    if fmt.answer_room is not None:
        target = (target + eos)[: fmt.answer_room]
        room = fmt.answer_room
    elif choices:
        room = max(len(c) for c in choices)
    else:
        room = len(target)
    budget = fmt.max_length - len(bos) - len(prompt) - room
    if budget < 0:
        raise SsmloraError(
            f"A prompt of {len(prompt)} tokens plus an answer of {room} tokens exceeds "
            f"data.max_length={fmt.max_length}; the prompt and the answer are never cut: raise "
            "data.max_length (or lower data.max_new_tokens)."
        )
    context = bos + cut_document(_ids(tokenizer, row["document"]), budget, fmt.truncation) + prompt
    out = {
        "input_ids": context + target,
        "labels": [IGNORE] * len(context) + target,
        "prompt_ids": context,
        "target_tokens": full_target,  # before any cut: the encoder reports cut targets
    }
    out["choice_input_ids"] = [context + c for c in choices]
    out["choice_labels"] = [[IGNORE] * len(context) + c for c in choices]
    return out


def generation_prompt(row: dict) -> list[int]:
    """The tokens a prediction is generated from (a row of :func:`encode_lm_example`): the context
    (``prompt_ids``), or the first token when there is none (a byte-LM window, whose first byte is
    never predicted)."""
    return list(row["prompt_ids"]) or list(row["input_ids"][:1])


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return (torch.arange(width) < lengths[:, None]).long()


@dataclass
class LMCollator:
    """Right-pads rows of :func:`encode_lm_example` into an :class:`LMBatch` (pads carry
    ``labels = -100`` and ``attention_mask = 0``), with the parts its objective reads: the
    options (``choices``), the prompts (``prompts``; with ``target_lengths`` too), the
    references, the gold classes without options (``gold``); a grouped task's ``groups``
    whenever the rows have them."""

    pad_token_id: int
    choices: bool = False
    prompts: bool = False
    target_lengths: bool = False
    references: bool = False
    gold: bool = False

    def __call__(self, rows: list[dict]) -> LMBatch:
        ids = _pad([r["input_ids"] for r in rows], self.pad_token_id)
        lengths = torch.tensor([len(r["input_ids"]) for r in rows])
        batch = LMBatch(
            input_ids=ids,
            attention_mask=_mask(lengths, ids.shape[1]),
            labels=_pad([r["labels"] for r in rows], IGNORE),
        )
        if self.choices:
            flat = [c for r in rows for c in r["choice_input_ids"]]
            choice_ids = _pad(flat, self.pad_token_id)
            batch.choices = ChoiceInputs(
                input_ids=choice_ids,
                attention_mask=_mask(torch.tensor([len(c) for c in flat]), choice_ids.shape[1]),
                labels=_pad([c for r in rows for c in r["choice_labels"]], IGNORE),
                num_choices=torch.tensor([len(r["choice_input_ids"]) for r in rows]),
            )
            batch.gold = torch.tensor([r["label"] for r in rows])
        if self.prompts:
            prompts = [generation_prompt(r) for r in rows]
            prompt_lengths = torch.tensor([len(p) for p in prompts])
            batch.prompts = PromptInputs(
                ids=_pad(prompts, self.pad_token_id),
                lengths=prompt_lengths,
                target_lengths=lengths - prompt_lengths if self.target_lengths else None,
            )
        if self.references:
            batch.references = [list(r["references"]) for r in rows]
        if self.gold:
            batch.gold = torch.tensor([r["label"] for r in rows])
        if GROUP_COLUMN in rows[0]:
            batch.groups = torch.tensor([r[GROUP_COLUMN] for r in rows])
        return batch
