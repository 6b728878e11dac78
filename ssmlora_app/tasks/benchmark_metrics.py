"""The generation benchmarks' metrics as torchmetrics metrics, over the official scorers of
:mod:`ssmlora_app.scoring`: DART's corpus BLEU and METEOR, Spider's exact set match and execution
accuracy (overall and per hardness level), L-Eval's exam scores.

Each ``update(preds, target)`` takes generated strings and each example's references (a list of
strings), like the other text metrics. Every state is a sum (``dist_reduce_fx="sum"``), so the
metrics are DDP-safe: corpus BLEU sums its sufficient statistics (clipped n-gram matches, possible
n-grams, lengths), the others per-example scores. Metrics that read the same scorer share their
states' layout, so a :class:`~torchmetrics.MetricCollection` updates them once (its compute groups).

What a metric needs beyond its name comes from :attr:`~ssmlora_app.tasks.TaskInfo.metric_options`
(the task's :meth:`~ssmlora_app.tasks.Task.metric_options`).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from ssmlora_app.errors import SsmloraError
from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.bleu import bleu_from_statistics, bleu_statistics
from ssmlora_app.scoring.leval import exam_score, gold_letters, response_letters
from ssmlora_app.scoring.leval_answers import answer_score
from ssmlora_app.scoring.meteor import meteor
from ssmlora_app.scoring.spider import LEVELS, evaluate

SPIDER_REFERENCE_SEPARATOR = "\t"
"""A Spider reference is ``"<gold SQL>\\t<db_id>"``, a line of the official gold file."""

SPIDER_METRICS = {
    "exact_set_match": ("exact", "all"),
    "execution_accuracy": ("exec", "all"),
    **{f"exact_set_match_{level}": ("exact", level) for level in LEVELS},
    **{f"execution_accuracy_{level}": ("exec", level) for level in LEVELS},
}
"""Spider metric name -> (what, hardness level) of the official table."""

EXAM_METRICS = ("exam_score", "exam_correct")
"""L-Eval: the score with its partial credit (L-Eval's ``exact_match``, here in [0, 1]) and the
share of questions answered fully right."""

BENCHMARK_METRICS = ("bleu", "meteor", "meteor_no_synonyms", *SPIDER_METRICS, *EXAM_METRICS)


def _sum_state(metric: Metric, name: str, size: int | None = None) -> None:
    default = (
        torch.zeros(size, dtype=torch.float64) if size else torch.tensor(0.0, dtype=torch.float64)
    )
    metric.add_state(name, default, dist_reduce_fx="sum")


class CorpusBleu(Metric):
    """DART's corpus BLEU (:func:`~ssmlora_app.scoring.bleu.corpus_bleu`: HF ``evaluate``'s
    ``bleu``, all of an example's references), from summed sentence statistics."""

    full_state_update = False

    def __init__(self, max_order: int = 4) -> None:
        super().__init__()
        self.max_order = max_order
        _sum_state(self, "matches", max_order)
        _sum_state(self, "possible", max_order)
        _sum_state(self, "hyp_length")
        _sum_state(self, "ref_length")

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        stats = [bleu_statistics(p, refs, self.max_order) for p, refs in zip(preds, target, strict=True)]  # fmt: skip
        # Rebound, not added in place (see tasks.metrics._MeanOverExamples.update).
        self.matches = self.matches + torch.tensor([s[0] for s in stats], dtype=torch.float64).sum(
            0
        )
        self.possible = self.possible + torch.tensor(
            [s[1] for s in stats], dtype=torch.float64
        ).sum(0)
        self.hyp_length = self.hyp_length + sum(s[2] for s in stats)
        self.ref_length = self.ref_length + sum(s[3] for s in stats)

    def compute(self) -> torch.Tensor:
        if self.ref_length == 0:
            return torch.tensor(0.0)
        result = bleu_from_statistics(
            [int(x) for x in self.matches.tolist()],
            [int(x) for x in self.possible.tolist()],
            int(self.hyp_length),
            int(self.ref_length),
        )
        return torch.tensor(result["bleu"], dtype=torch.float32)


class _MeanScore(Metric):
    """Mean of per-example scores (sums of scores and of fully right answers, and a count)."""

    full_state_update = False

    def __init__(self, field: str = "score") -> None:
        super().__init__()
        self.field = field
        _sum_state(self, "total")
        _sum_state(self, "correct")
        _sum_state(self, "count")

    def scores(self, preds: list[str], target: list[list[str]]) -> list[float]:
        raise NotImplementedError

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        scores = self.scores(preds, target)
        self.total = self.total + sum(scores)
        self.correct = self.correct + sum(s == 1.0 for s in scores)
        self.count = self.count + len(scores)

    def compute(self) -> torch.Tensor:
        value = self.correct if self.field == "correct" else self.total
        return (value / self.count.clamp(min=1)).float()


class MeanMeteor(_MeanScore):
    """DART's METEOR (:func:`~ssmlora_app.scoring.meteor.meteor`: HF ``evaluate``'s ``meteor``,
    the best of an example's references), mean over examples; ``synonyms=False`` leaves out the
    WordNet stage (logged as ``meteor_no_synonyms``)."""

    def __init__(self, synonyms: bool = True) -> None:
        super().__init__()
        self.synonyms = synonyms

    def scores(self, preds: list[str], target: list[list[str]]) -> list[float]:
        try:
            result = meteor(preds, target, synonyms=self.synonyms)
        except ScoringError as err:
            raise SsmloraError(f"METEOR: {err}.") from None
        return [result["meteor"]] * len(preds)  # the batch mean, once per example: the same sum


class LEvalExam(_MeanScore):
    """L-Eval's closed-ended score of generated answers against the file's output (the single
    reference): ``letters`` (options: letter sets with the 0.25 partial credit; ``multiple``:
    L-Eval's Coursera reading of responses), ``number`` (GSM), ``judge`` (sci-fi) or ``text``
    (topic retrieval); see :mod:`ssmlora_app.scoring.leval` and
    :mod:`ssmlora_app.scoring.leval_answers`."""

    def __init__(self, kind: str, multiple: bool = False, field: str = "score") -> None:
        super().__init__(field)
        self.kind, self.multiple = kind, multiple

    def scores(self, preds: list[str], target: list[list[str]]) -> list[float]:
        out = []
        for response, refs in zip(preds, target, strict=True):
            if self.kind == "letters":
                out.append(exam_score(response_letters(response, self.multiple), gold_letters(refs[0])))  # fmt: skip
            else:
                out.append(answer_score(response, refs[0], self.kind))
        return out


class SpiderScore(Metric):
    """Spider exact set match or execution accuracy at one hardness level, as taoyds/spider
    ``evaluation.py`` computes them (:func:`ssmlora_app.scoring.spider.evaluate`); each reference
    is ``"<gold SQL>\\t<db_id>"``. Every instance of a collection scores the same way (``execution``
    for all), so they share their states and the collection scores each batch once."""

    full_state_update = False

    def __init__(
        self, what: str, level: str, database_dir: str, tables: str, execution: bool,
        timeout_s: float = 30.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.what, self.level = what, level
        self.database_dir, self.tables = database_dir, tables
        self.execution, self.timeout_s = execution, timeout_s
        for name in ("count", "exact", "exec"):
            _sum_state(self, name, len(LEVELS) + 1)  # easy, medium, hard, extra, all

    def update(self, preds: list[str], target: list[list[str]]) -> None:
        pairs = []
        for prediction, refs in zip(preds, target, strict=True):
            gold, _, db_id = refs[0].rpartition(SPIDER_REFERENCE_SEPARATOR)
            pairs.append((prediction, gold, db_id))
        try:
            out = evaluate(pairs, self.database_dir, self.tables, self.execution, self.timeout_s)
        except ScoringError as err:
            raise SsmloraError(f"Spider scoring: {err}") from None
        if out["skipped"]:
            raise SsmloraError(
                f"Spider scoring: no database file for {sorted(out['skipped'])} under "
                f"{self.database_dir} (data.task.missing_databases: drop leaves their questions out)."
            )
        count, exact, executed = (
            torch.zeros(len(LEVELS) + 1, dtype=torch.float64) for _ in range(3)
        )
        for result in out["results"]:
            for i in ((*LEVELS, "all").index(result.hardness), len(LEVELS)):
                count[i] += 1
                exact[i] += result.exact
                executed[i] += bool(result.execution)
        self.count = self.count + count
        self.exact = self.exact + exact
        self.exec = self.exec + executed

    def compute(self) -> torch.Tensor:
        i = (*LEVELS, "all").index(self.level)
        hits = self.exact if self.what == "exact" else self.exec
        return (hits[i] / self.count[i].clamp(min=1)).float()


def benchmark_metric(name: str, options: dict | None) -> Metric:
    """The metric ``name`` (one of :data:`BENCHMARK_METRICS`) with the task's ``options``."""
    options = options or {}
    if name == "bleu":
        return CorpusBleu()
    if name in ("meteor", "meteor_no_synonyms"):
        return MeanMeteor(synonyms=name == "meteor")
    if name in SPIDER_METRICS:
        what, level = SPIDER_METRICS[name]
        return SpiderScore(
            what, level, options["database_dir"], options["tables"], options["execution"],
            options.get("timeout_s", 30.0),
        )  # fmt: skip
    if name in EXAM_METRICS:
        field = "correct" if name == "exam_correct" else "score"
        return LEvalExam(options["answer"], bool(options.get("multiple")), field)
    raise ValueError(f"unknown metric {name!r}")
