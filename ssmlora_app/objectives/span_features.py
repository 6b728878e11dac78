"""Extractive QA features: each question with its context, tokenised into windows of
``max_length`` tokens (``[CLS] question [SEP] context-window [SEP]``); a context too long for one
window is cut into several that overlap by ``doc_stride`` tokens, so one example gives several
features. Each token keeps its character span in the context (its *offsets*), through which a
predicted span maps back to the context's text, and the gold answer maps to token positions.

As HF ``run_qa.py`` prepares them (``prepare_train_features`` / ``prepare_validation_features``):
the question's leading whitespace is dropped; a window labels the answer's first and last tokens
when it holds the whole answer (the first of the reference answers), else the first token
([CLS]), as does a question without an answer (SQuAD v2.0). The positions are the last context
token starting at or before the answer's first character, and the first context token ending at
or after its last one; unlike ``run_qa.py``'s scan, the search never leaves the context (its
scan can run past the window's last token when the answer ends the window).
"""

from __future__ import annotations

import datasets
from transformers import PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError

OUTSIDE = -1
"""The offsets of a token outside the context (question, special and padding tokens)."""

FEATURE_COLUMNS = ("feature", "example", "id", "context", "answers", "offsets")
"""What a window carries besides the model's inputs and its labelled positions: its row in the
encoded split, its question's row in the split as loaded, the question id, the context and the
reference answers (post-processing reads them), and its tokens' offsets, flat
``[s0, e0, s1, e1, ...]`` (:data:`OUTSIDE` outside the context)."""


def answer_positions(
    offsets: list[tuple[int, int]], start_char: int | None, end_char: int | None
) -> tuple[int, int]:
    """Token positions of the answer ``[start_char, end_char)`` in one window.

    ``offsets``: each token's character span in the context, :data:`OUTSIDE` outside it. Returns
    ``(0, 0)`` (the first token) when there is no answer (``start_char`` None) or the window
    does not hold all of it.
    """
    context = [k for k, (s, _) in enumerate(offsets) if s != OUTSIDE]
    if start_char is None or not context:
        return 0, 0
    first, last = context[0], context[-1]
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return 0, 0
    start = max(k for k in context if offsets[k][0] <= start_char)
    end = min(k for k in context if offsets[k][1] >= end_char)
    return start, end


def check_window_room(
    questions: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int, doc_stride: int
) -> None:
    """Raise :class:`SsmloraError` unless every question leaves a window room for more than
    ``doc_stride`` context tokens (the tokenizer would otherwise stop with a panic)."""
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = max(lengths, default=0)
    room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= doc_stride:
        raise SsmloraError(
            f"data.max_length={max_length} leaves {room} context tokens per window beside the "
            f"longest question ({longest} tokens), not more than doc_stride={doc_stride}: raise "
            "data.max_length or lower the task's doc_stride."
        )


def encode_windows(
    batch: dict,
    indices: list[int],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    doc_stride: int,
) -> dict:
    """A batch of example rows (``question``, ``context``, ``id``, ``answers``,
    ``answer_starts``; ``indices``: their rows in the split) -> one row per window: the
    tokenizer's outputs, ``start_positions``/``end_positions`` and the :data:`FEATURE_COLUMNS`
    (``feature`` left at -1, numbered once the whole split is encoded)."""
    questions = [q.lstrip() for q in batch["question"]]
    check_window_room(questions, tokenizer, max_length, doc_stride)
    enc = tokenizer(
        questions,
        batch["context"],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    samples = enc.pop("overflow_to_sample_mapping")
    windows = enc.pop("offset_mapping")
    out = {key: list(values) for key, values in enc.items()}
    for column in ("start_positions", "end_positions", *FEATURE_COLUMNS):
        out[column] = []
    for i, (sample, token_offsets) in enumerate(zip(samples, windows, strict=True)):
        sequence = enc.sequence_ids(i)
        offsets = [
            (int(s), int(e)) if seq == 1 else (OUTSIDE, OUTSIDE)
            for (s, e), seq in zip(token_offsets, sequence, strict=True)
        ]
        answers, starts = batch["answers"][sample], batch["answer_starts"][sample]
        if answers:
            span = answer_positions(offsets, starts[0], starts[0] + len(answers[0]))
        else:
            span = answer_positions(offsets, None, None)
        out["start_positions"].append(span[0])
        out["end_positions"].append(span[1])
        out["feature"].append(-1)
        out["example"].append(indices[sample])
        out["id"].append(batch["id"][sample])
        out["context"].append(batch["context"][sample])
        out["answers"].append(list(answers))
        out["offsets"].append([x for pair in offsets for x in pair])
    return out


def encode_split(
    ds: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    doc_stride: int,
    desc: str,
) -> datasets.Dataset:
    """Every window of every example of ``ds`` (rows of
    :meth:`~ssmlora_app.tasks.base.Task.load_qa_split`), numbered in ``feature``."""
    if not tokenizer.is_fast:
        raise SsmloraError(
            f"Extractive QA maps answers through the tokenizer's character offsets, which only a "
            f"fast tokenizer gives; {type(tokenizer).__name__} is not one (give a tokenizer.json)."
        )
    features = ds.map(
        encode_windows,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "doc_stride": doc_stride},
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        desc=f"Tokenising {desc}",
    )
    features = features.remove_columns("feature")
    return features.add_column("feature", list(range(len(features))))
