"""Extractive QA post-processing: from each window's start and end logits to one answer per
question (HF ``run_qa.py``'s ``postprocess_qa_predictions``), and the SQuAD scores of a split.

A span ``(i, j)`` of a window scores ``start_i + end_j``. Its candidates are the pairs of the
window's ``n_best_size`` highest start and end logits whose tokens both lie in the context, with
``i <= j < i + max_answer_length``. A question's answer is the context's text under its best
candidate over *all* of its windows (a long context gives several), or, when no window has a
candidate, ``"empty"`` with score 0 (as ``run_qa.py``). SQuAD v2.0: the no-answer score of a
window is ``start_0 + end_0`` (its first token, [CLS]), the question's is the lowest over its
windows (every window must want to abstain), and the question abstains (answers ``""``) when
``null - best > null_score_diff_threshold``. Its no-answer probability, written for
``evaluate-v2.0.py``'s ``--na-prob-file``, is ``sigmoid(null - best)``: the softmax of the two
scores, monotone in the difference, so ``best_exact``/``best_f1`` search the same decisions as
the threshold.

:func:`window_spans` keeps, per window, only the best candidate and the no-answer score (a
question's best candidate is the best of its windows' best); :func:`reference_answers` is the
slow literal form (every candidate, n-best lists) they are tested against. Knowing difference:
a candidate whose text is empty (a zero-width span) is never chosen, where ``run_qa.py`` v1 may
answer ``""`` with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from ssmlora_app.scoring.squad import score_v1, score_v2

NO_SPAN_TEXT = "empty"
"""The answer of a question with no candidate span at all (``run_qa.py``'s placeholder)."""


@dataclass
class WindowSpans:
    """Each window's best candidate span and its no-answer score, all ``(F,)``."""

    start_char: Tensor
    """int64: the span's first character in the context; -1 when the window has no candidate."""
    end_char: Tensor
    """int64: one past its last character; -1 when none."""
    score: Tensor
    """float32: ``start_i + end_j``; ``-inf`` when none."""
    null_score: Tensor
    """float32: ``start_0 + end_0``."""


def window_spans(
    start_logits: Tensor,
    end_logits: Tensor,
    offsets: Tensor,
    mask: Tensor,
    n_best_size: int,
    max_answer_length: int,
) -> WindowSpans:
    """The best candidate of each window (see the module docstring), vectorised.

    ``start_logits``, ``end_logits``: ``(F, L)``; ``offsets``: ``(F, L, 2)`` character spans,
    -1 outside the context; ``mask``: ``(F, L)`` 1 for real tokens, 0 for padding (never a
    candidate)."""
    start = start_logits.float().masked_fill(mask == 0, -math.inf)
    end = end_logits.float().masked_fill(mask == 0, -math.inf)
    k = min(n_best_size, start.shape[1])
    start_top, start_idx = start.topk(k, dim=1)  # (F, k)
    end_top, end_idx = end.topk(k, dim=1)
    start_off = offsets.gather(1, start_idx.unsqueeze(-1).expand(-1, -1, 2))  # (F, k, 2)
    end_off = offsets.gather(1, end_idx.unsqueeze(-1).expand(-1, -1, 2))
    first = start_off[..., 0].unsqueeze(2)  # (F, k, 1): the span's first character
    last = end_off[..., 1].unsqueeze(1)  # (F, 1, k): one past its last character
    length = end_idx.unsqueeze(1) - start_idx.unsqueeze(2) + 1  # (F, k, k) tokens
    valid = (first >= 0) & (end_off[..., 0].unsqueeze(1) >= 0) & (length >= 1)
    valid &= (length <= max_answer_length) & (last > first)
    scores = (start_top.unsqueeze(2) + end_top.unsqueeze(1)).masked_fill(~valid, -math.inf)
    best = scores.flatten(1).argmax(1)  # (F,): the first best pair in (start rank, end rank)
    i, j = best // k, best % k
    rows = torch.arange(start.shape[0], device=start.device)
    found = valid.flatten(1).any(1)
    none = torch.full_like(i, -1)
    return WindowSpans(
        start_char=torch.where(found, first[rows, i, 0], none),
        end_char=torch.where(found, last[rows, 0, j], none),
        score=scores.flatten(1)[rows, best],
        null_score=start_logits[:, 0].float() + end_logits[:, 0].float(),
    )


@dataclass(frozen=True)
class Answer:
    text: str
    """The answer ("" when a v2.0 question abstains)."""
    na_prob: float
    """v2.0: the no-answer probability ``sigmoid(null - best)``; 0.0 under v1.1."""


def select_answers(
    feature: Sequence[int],
    example: Sequence[int],
    start_char: Sequence[int],
    end_char: Sequence[int],
    score: Sequence[float],
    null_score: Sequence[float],
    contexts: Mapping[int, str],
    version_2: bool,
    threshold: float = 0.0,
) -> dict[int, Answer]:
    """One answer per question from its windows' best spans (one entry per window, any order;
    windows are read in ``feature`` order, so ties go to the earlier window). ``contexts``:
    question row -> its context."""
    best: dict[int, tuple[float, int, int]] = {}
    null: dict[int, float] = {}
    for f in np.argsort(np.asarray(feature), kind="stable"):
        e = int(example[f])
        null[e] = min(null.get(e, math.inf), float(null_score[f]))
        best.setdefault(e, (-math.inf, -1, -1))
        if start_char[f] >= 0 and float(score[f]) > best[e][0]:
            best[e] = (float(score[f]), int(start_char[f]), int(end_char[f]))
    answers = {}
    for e, (top, first, last) in best.items():
        text = contexts[e][first:last] if first >= 0 else NO_SPAN_TEXT
        top = top if first >= 0 else 0.0
        if not version_2:
            answers[e] = Answer(text, 0.0)
            continue
        diff = null[e] - top
        answers[e] = Answer("" if diff > threshold else text, _sigmoid(diff))
    return answers


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def reference_answers(
    windows: Sequence[tuple[int, Sequence[float], Sequence[float], Sequence]],
    contexts: Mapping[int, str],
    version_2: bool,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    threshold: float = 0.0,
) -> dict[int, tuple[str, float]]:
    """The slow literal post-processing (every candidate of every window, the n-best list with
    the no-answer entry, as ``run_qa.py``), for the tests: ``windows`` are ``(question row,
    start logits, end logits, offsets)`` with ``None`` offsets outside the context. Returns
    question row -> (answer, ``null - best`` score difference; 0.0 under v1.1)."""
    by_example: dict[int, list] = {}
    for window in windows:
        by_example.setdefault(window[0], []).append(window[1:])
    out = {}
    for e, items in by_example.items():
        candidates, null = [], None
        for starts, ends, offsets in items:
            window_null = starts[0] + ends[0]
            null = window_null if null is None else min(null, window_null)
            top_starts = sorted(range(len(starts)), key=lambda t: -starts[t])[:n_best_size]
            top_ends = sorted(range(len(ends)), key=lambda t: -ends[t])[:n_best_size]
            for i in top_starts:
                for j in top_ends:
                    if offsets[i] is None or offsets[j] is None:
                        continue
                    if j < i or j - i + 1 > max_answer_length:
                        continue
                    text = contexts[e][offsets[i][0] : offsets[j][1]]
                    if text:
                        candidates.append((starts[i] + ends[j], text))
        ranked = sorted(candidates, key=lambda c: -c[0])[:n_best_size]
        best_score, best_text = ranked[0] if ranked else (0.0, NO_SPAN_TEXT)
        if not version_2:
            out[e] = (best_text, 0.0)
            continue
        diff = null - best_score
        out[e] = ("" if diff > threshold else best_text, diff)
    return out


class SquadScore(Metric):
    """One of the official SQuAD scores (``key``: ``exact_match``/``f1`` for v1.1, the keys of
    ``evaluate-v2.0.py`` for v2.0) of a split's answers, as a fraction.

    ``update`` takes each window's :class:`WindowSpans`, its row in the encoded split
    (``feature``) and its question's row (``example``), and the windows' questions (row, id,
    context, reference answers). The numbers are ``cat`` states (gathered from every DDP rank);
    the questions' texts are gathered with them (``all_gather_object``), and ``compute`` runs the
    post-processing over all windows of the split (:func:`select_answers`) and scores it with
    :mod:`ssmlora_app.scoring.squad`. A v2.0 key absent from the split's scores (``NoAns_f1``
    with no unanswerable question) is NaN.
    """

    full_state_update = False

    def __init__(self, key: str, version_2: bool, threshold: float = 0.0) -> None:
        super().__init__()
        self.key, self.version_2, self.threshold = key, version_2, threshold
        for name in ("feature", "example", "start_char", "end_char", "score", "null_score"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.questions: dict[int, tuple[str, str, tuple[str, ...]]] = {}

    def update(
        self,
        spans: WindowSpans,
        feature: Tensor,
        example: Tensor,
        examples: Sequence[tuple[int, str, str, Sequence[str]]],
    ) -> None:
        self.feature.append(feature.long())
        self.example.append(example.long())
        self.start_char.append(spans.start_char.long())
        self.end_char.append(spans.end_char.long())
        self.score.append(spans.score.float())
        self.null_score.append(spans.null_score.float())
        for row, qid, context, answers in examples:
            self.questions[int(row)] = (qid, context, tuple(answers))

    def _sync_dist(self, dist_sync_fn=gather_all_tensors, process_group=None) -> None:
        super()._sync_dist(dist_sync_fn, process_group)
        distributed = torch.distributed
        if distributed.is_available() and distributed.is_initialized():
            group = process_group or self.process_group
            gathered: list = [None] * distributed.get_world_size(group)
            distributed.all_gather_object(gathered, self.questions, group=group)
            for questions in gathered:
                self.questions.update(questions)

    def compute(self) -> Tensor:
        states = {
            name: dim_zero_cat(getattr(self, name)).cpu().numpy()
            for name in ("feature", "example", "start_char", "end_char", "score", "null_score")
        }
        if not len(states["feature"]):
            return torch.tensor(math.nan)
        for name in ("feature", "example", "start_char", "end_char"):
            states[name] = states[name].astype(np.int64)
        contexts = {row: q[1] for row, q in self.questions.items()}
        answers = select_answers(
            **states, contexts=contexts, version_2=self.version_2, threshold=self.threshold
        )
        references = {self.questions[e][0]: list(self.questions[e][2]) for e in answers}
        predictions = {self.questions[e][0]: a.text for e, a in answers.items()}
        if self.version_2:
            na_probs = {self.questions[e][0]: a.na_prob for e, a in answers.items()}
            scores = score_v2(references, predictions, na_probs)
        else:
            scores = score_v1(references, predictions)
        return torch.tensor(scores.get(self.key, math.nan) / 100, dtype=torch.float32)

    def reset(self) -> None:
        super().reset()
        self.questions = {}
