"""Task metrics with torchmetrics, by name.

Classification metrics (``accuracy``, ``f1``, ``macro_f1``, ``mcc``, regression ones) take class-id
predictions, also the arg-max option of causal-LM multiple choice. Text metrics (``rouge1``,
``rouge2``, ``rougeL``, ``token_f1``, ``exact_match``) take generated strings and lists of reference
strings. Teacher-forced metrics (``token_accuracy``, ``sequence_accuracy``, ``bits_per_byte``) take
per-example sums from the module (see :func:`teacher_forced_stats`).

The generation benchmarks' metrics (``bleu``, ``meteor``, Spider's ``exact_set_match`` and
``execution_accuracy``, L-Eval's ``exam_score``) are in :mod:`ssmlora_app.tasks.benchmark_metrics`.

Grouped tasks (MultiRC: one example per answer option, grouped by question) also pass each
example's group id as ``update(preds, target, groups=...)``; a metric collection hands ``groups``
only to the metrics whose ``update`` takes it. There ``exact_match`` is :class:`GroupedExactMatch`
(class ids: the fraction of groups whose examples are all right), not the text metric.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.text import ROUGEScore
from torchmetrics.utilities import dim_zero_cat

from ssmlora_app.errors import SsmloraError
from ssmlora_app.scoring.short_answer import short_answer_exact, short_answer_f1
from ssmlora_app.tasks.benchmark_metrics import BENCHMARK_METRICS, benchmark_metric

TEACHER_FORCED_METRICS = ("token_accuracy", "sequence_accuracy", "bits_per_byte")


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 of short answers: SQuAD's normalisation, except that an answer made of
    articles keeps them, so a gold answer "A" (a choice letter) never matches an empty prediction
    (see :mod:`ssmlora_app.scoring.short_answer`)."""
    return short_answer_f1(prediction, reference)


class _MeanOverExamples(Metric):
    """Mean of a per-example score; the score of an example is its best over its references."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def score(self, prediction: str, reference: str) -> float:
        raise NotImplementedError

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        # Sums are rebound, not added in place: states made in ``validate``'s inference mode
        # cannot be updated in place by fit's validation, which runs outside it.
        scores = [max((self.score(p, r) for r in refs), default=0.0) for p, refs in zip(preds, target, strict=True)]  # fmt: skip
        self.total = self.total + sum(scores)
        self.count = self.count + len(scores)

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class TokenF1(_MeanOverExamples):
    """Token F1 (:func:`token_f1`), max over references, mean over examples."""

    def score(self, prediction: str, reference: str) -> float:
        return token_f1(prediction, reference)


class ExactMatch(_MeanOverExamples):
    """1 when the prediction's answer tokens equal a reference's (the normalisation of
    :func:`token_f1`: "A" is not the empty answer)."""

    def score(self, prediction: str, reference: str) -> float:
        return short_answer_exact(prediction, reference)


class GroupedExactMatch(Metric):
    """Exact match over groups of class-id predictions: the fraction of groups whose examples are
    all predicted right (MultiRC's EM: a question counts when every one of its answer options is
    classified right; SuperGLUE's and HF ``evaluate``'s ``exact_match``).

    ``update`` takes ``preds`` and ``target`` (B,) class ids and ``groups`` (B,) integer group
    ids. A group's examples may arrive in several batches, or on several ranks: the states keep
    every example's group and error (``cat``, gathered by the DDP sync) and ``compute`` scores the
    groups over all of them at once.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("groups", default=[], dist_reduce_fx="cat")
        self.add_state("wrong", default=[], dist_reduce_fx="cat")

    def update(
        self, preds: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None
    ) -> None:
        if groups is None:
            raise SsmloraError(
                "exact_match over class ids scores groups of examples and needs their ids: the "
                "task's data must carry a 'group' column (MultiRC: the question of each answer "
                "option) and its TaskInfo say grouped=True."
            )
        if not preds.shape == target.shape == groups.shape:
            raise SsmloraError(
                f"exact_match: preds {tuple(preds.shape)}, target {tuple(target.shape)} and groups "
                f"{tuple(groups.shape)} must have the same shape (one group id per example)."
            )
        self.groups.append(groups.long().flatten())
        self.wrong.append((preds != target).long().flatten())

    def compute(self) -> torch.Tensor:
        if isinstance(self.groups, list) and not self.groups:
            return torch.tensor(0.0, device=self.device)
        groups, wrong = dim_zero_cat(self.groups), dim_zero_cat(self.wrong)  # (N,), (N,)
        ids, group_of = torch.unique(groups, return_inverse=True)  # (G,), (N,)
        errors = torch.zeros(len(ids), dtype=torch.long, device=groups.device)
        errors.index_add_(0, group_of, wrong)  # (G,): wrong examples per group
        return (errors == 0).float().mean()


class RougeF(Metric):
    """ROUGE-1/2/L F-measure (torchmetrics, best reference per example, mean over examples)."""

    full_state_update = False

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.rouge = ROUGEScore(rouge_keys=(key,), accumulate="best")

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        self.rouge.update(preds, target)

    def compute(self) -> torch.Tensor:
        return self.rouge.compute()[f"{self.key}_fmeasure"]

    def reset(self) -> None:
        super().reset()
        self.rouge.reset()


class TeacherForced(Metric):
    """Teacher-forced statistics over the target tokens; ``update`` takes per-example tensors
    ``nll`` (summed negative log-likelihood, nats), ``correct`` and ``tokens`` (counts)."""

    full_state_update = False

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        for name in ("nll", "correct", "tokens", "exact", "sequences"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: torch.Tensor, correct: torch.Tensor, tokens: torch.Tensor) -> None:
        # Rebound, not in place (see _MeanOverExamples.update).
        self.nll = self.nll + nll.double().sum()
        self.correct = self.correct + correct.double().sum()
        self.tokens = self.tokens + tokens.double().sum()
        self.exact = self.exact + (correct == tokens).double().sum()
        self.sequences = self.sequences + tokens.numel()

    def compute(self) -> torch.Tensor:
        if self.kind == "bits_per_byte":  # every token is one byte: mean NLL in bits
            return (self.nll / self.tokens.clamp(min=1) / math.log(2)).float()
        if self.kind == "token_accuracy":
            return (self.correct / self.tokens.clamp(min=1)).float()
        return (self.exact / self.sequences.clamp(min=1)).float()


def teacher_forced_stats(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example summed NLL (nats), correct arg-max count and target-token count.

    ``logits`` (B, L, V) predict the next token; ``labels`` (B, L) hold -100 off the target.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    safe = labels.clamp(min=0)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), safe, reduction="none")
    nll = (nll * mask).sum(1)
    correct = ((logits.argmax(-1) == safe) & mask).sum(1)
    return nll, correct, mask.sum(1)


class MatthewsCorr(MulticlassMatthewsCorrCoef):
    """Matthews correlation as GLUE's evaluator computes it (scikit-learn's
    ``matthews_corrcoef``, Gorodkin's multiclass form): ``cov(y, ŷ) / sqrt(cov(y, y) · cov(ŷ, ŷ))``
    from the confusion matrix, and **0 when either marginal is constant** (one predicted class, or
    one true class). torchmetrics 1.9 returns a smoothed nonzero value there instead (0.0411 for
    a constant majority prediction on CoLA's dev subset, where the papers' convention is 0): a
    collapsed run would look like a learning one."""

    def compute(self) -> torch.Tensor:
        c = self.confmat.double()  # (true, predicted)
        n = c.sum()
        true, pred = c.sum(1), c.sum(0)
        cov_tp = torch.trace(c) * n - true @ pred
        cov_tt = n * n - true @ true
        cov_pp = n * n - pred @ pred
        denominator = cov_tt * cov_pp
        if denominator == 0:
            return torch.zeros((), dtype=torch.float32, device=c.device)
        return (cov_tp / denominator.sqrt()).float()


def metric(
    name: str, num_labels: int, grouped: bool = False, options: dict | None = None
) -> Metric:
    """A fresh metric called ``name`` (the arguments as :func:`build_metrics`'s)."""
    if name == "accuracy":
        # micro = the fraction of correct predictions (torchmetrics defaults to macro)
        return MulticlassAccuracy(num_classes=num_labels, average="micro")
    if name == "f1":
        return BinaryF1Score()
    if name == "macro_f1":
        return MulticlassF1Score(num_classes=num_labels, average="macro")
    if name == "mcc":
        return MatthewsCorr(num_classes=num_labels)
    if name == "pearson":
        return PearsonCorrCoef()
    if name == "spearman":
        return SpearmanCorrCoef()
    if name == "mse":
        return MeanSquaredError()
    if name in ("rouge1", "rouge2", "rougeL"):
        return RougeF(name)
    if name == "token_f1":
        return TokenF1()
    if name == "exact_match":
        return GroupedExactMatch() if grouped else ExactMatch()
    if name in TEACHER_FORCED_METRICS:
        return TeacherForced(name)
    if name in BENCHMARK_METRICS:
        return benchmark_metric(name, options)
    raise ValueError(f"unknown metric {name!r}")


def build_metrics(
    names: tuple[str, ...],
    num_labels: int,
    prefix: str,
    grouped: bool = False,
    options: dict | None = None,
) -> MetricCollection:
    """A fresh collection (one per stage and dataloader), logged as ``{prefix}/{name}``.

    ``grouped``: the examples come in groups (see :class:`~.base.TaskInfo`); ``exact_match`` is
    then :class:`GroupedExactMatch` over class ids, which the module updates with ``groups=``.
    ``options``: the task's :attr:`~.base.TaskInfo.metric_options`, read by the benchmarks'
    metrics (:mod:`ssmlora_app.tasks.benchmark_metrics`).
    """
    return MetricCollection(
        {n: metric(n, num_labels, grouped, options) for n in names}, prefix=f"{prefix}/"
    )
