"""The results ``ssmlora report`` reads: each run's best validation score of its task's headline
metric (the papers' GLUE protocol), and the cells of the seeds of one configuration.

What pools (see :func:`pool`): a cell holds the runs of one task whose settings agree on everything
but the seed and the logging keys (:meth:`~ssmlora_app.run.RunFolder.settings_hash`), one run per
seed. Runs with the same settings and seed are one measurement: an identical rerun, or a killed run
and its resumed continuation written to another folder; the finished one with the most steps
counts and the others are listed as left out. Folders without training (validate-only logs of older
versions) are not runs. A run whose best score stays at the majority-class baseline is marked
collapsed (see :func:`is_collapsed`)."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ssmlora_app.callbacks.summary import BASELINE
from ssmlora_app.run import RunFolder

LOWER_IS_BETTER = ("mse", "loss")
COLLAPSE_TOLERANCE = 1e-6


@dataclass
class RunResult:
    """One run's headline result."""

    path: Path
    task: str
    adapter: dict
    """The adapter config (``adapter_type`` + fields) from ``hparams.yaml``."""
    metric: str
    """TensorBoard tag of the headline metric (``val/accuracy``)."""
    best: float
    best_step: int
    best_epoch: int | None
    seed: int | None
    adapter_params: int | None
    trainable_params: int | None
    curve: list[tuple[int, float]] = field(repr=False)
    """``(step, value)`` of every evaluation."""
    settings_hash: str = ""
    """Equal for the seeds of one configuration (see ``RunFolder.settings_hash``)."""
    settings: dict = field(default_factory=dict, repr=False)
    """The run's settings (config.yaml without seed and logging keys), flattened."""
    finished: bool = True
    """Fit ended and wrote the adapter (a killed run has none)."""
    last_step: int = 0
    baseline: float | None = None
    """Majority-class accuracy of the evaluation split, as the fit logged it."""
    seconds_per_step: float | None = None
    """Median wall time of a training step (``RunFolder.seconds_per_step``)."""
    other_splits: dict[str, tuple[str, float, list]] = field(default_factory=dict)
    """The task's other evaluation splits (state tracking's 2T and 4T lengths, MNLI mismatched):
    split -> (tag, value at the headline's best step, i.e. of the same checkpoint, curve)."""

    @property
    def method_key(self) -> str:
        return json.dumps(self.adapter, sort_keys=True)

    @property
    def config_key(self) -> str:
        """The configuration: adapter (from the record) and the other settings (config.yaml)."""
        return f"{self.method_key}|{self.settings_hash}"

    @property
    def collapsed(self) -> bool:
        return is_collapsed(self)


def is_collapsed(result: RunResult) -> bool:
    """The run's best score stays at what always predicting the majority class scores: accuracy
    at most the logged majority-class accuracy, MCC at most 0 (its value for any constant
    prediction). Other metrics are not judged."""
    name = result.metric.rsplit("/", 1)[-1]
    if name == "accuracy" and result.baseline is not None:
        return result.best <= result.baseline + COLLAPSE_TOLERANCE
    if name == "mcc":
        return result.best <= COLLAPSE_TOLERANCE
    return False


@dataclass
class Cell:
    """The seeds of one (task, method)."""

    task: str
    method: str
    metric: str
    runs: list[RunResult]

    @property
    def values(self) -> list[float]:
        return [r.best for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def collapsed(self) -> list[RunResult]:
        return [r for r in self.runs if r.collapsed]

    @property
    def seconds_per_step(self) -> float | None:
        """Median over the seeds of each run's median step time."""
        times = [r.seconds_per_step for r in self.runs if r.seconds_per_step is not None]
        return statistics.median(times) if times else None


def read_run(folder: RunFolder) -> RunResult | None:
    """The result of one run folder; None when it has no hparams.yaml, no headline metric yet, or
    never trained (an evaluation's logs)."""
    if not folder.hparams_path.is_file():
        return None
    record = folder.record()
    info = record.task_info
    if not info.metrics or not info.eval_splits:
        return None
    metric = info.metrics[0]
    tag = f"{info.eval_splits[0].replace('validation', 'val')}/{metric}"
    events = folder.scalar_events()  # the event files, read once
    scalars = folder.scalars(events)
    curve = scalars.get(tag)
    if not curve or not _trained(folder, scalars):
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    best_step, best = pick(curve, key=lambda point: point[1])
    other_splits = {}
    for split in info.eval_splits[1:]:
        other = f"{split.replace('validation', 'val')}/{metric}"
        points = scalars.get(other, [])
        at_best = [value for step, value in points if step == best_step]
        if at_best:
            other_splits[split] = (other, at_best[-1], points)
    epochs = [value for step, value in scalars.get("epoch", []) if step <= best_step]
    return RunResult(
        path=folder.path,
        task=info.task,
        adapter=record.adapter_fields(),
        metric=tag,
        best=best,
        best_step=best_step,
        best_epoch=int(epochs[-1]) if epochs else None,
        seed=folder.seed(),
        adapter_params=record.params.get("params/adapter"),
        trainable_params=record.params.get("params/trainable"),
        curve=curve,
        settings_hash=folder.settings_hash(),
        settings=folder.settings(),
        finished=folder.has_adapter(),
        last_step=max(step for points in scalars.values() for step, _ in points),
        seconds_per_step=folder.seconds_per_step(events=events),
        baseline=next(
            (v for _, v in scalars.get(tag.rsplit("/", 1)[0] + f"/{BASELINE}", [])), None
        ),
        other_splits=other_splits,
    )


def _trained(folder: RunFolder, scalars: dict) -> bool:
    """Whether a folder is a fit's (an evaluation's logs are not a run): it logged training
    scalars or the fit's majority baseline, or wrote a checkpoint or an adapter (a fit shorter than
    ``log_every_n_steps`` logs no ``train/`` scalar)."""
    return (
        any(t.startswith("train/") or t.endswith(f"/{BASELINE}") for t in scalars)
        or bool(folder.checkpoint_files())
        or folder.has_adapter()
    )


def align_versions(results: Sequence[RunResult]) -> None:
    """Compare runs of one task on the settings (and adapter fields) they all record. A run
    written by an older version of the app lacks the options added since (its config has no such
    key: the option did not exist, so the run had the behaviour of its default); such a key does
    not tell configurations apart. A setting every run records still does."""
    for task in {r.task for r in results}:
        same_task = [r for r in results if r.task == task]
        common = set.intersection(*(set(r.settings) for r in same_task))
        for result in same_task:
            result.settings = {k: v for k, v in result.settings.items() if k in common}
            text = json.dumps(result.settings, sort_keys=True, default=str)
            result.settings_hash = hashlib.sha256(text.encode()).hexdigest()[:12]
        for kind in {r.adapter.get("adapter_type") for r in same_task}:
            runs = [r for r in same_task if r.adapter.get("adapter_type") == kind]
            fields = set.intersection(*(set(r.adapter) for r in runs))
            for result in runs:
                result.adapter = {k: v for k, v in result.adapter.items() if k in fields}


def pool(results: Sequence[RunResult]) -> tuple[list[RunResult], list[RunResult]]:
    """One run per (task, settings, seed): the finished one with the most steps (then the
    newest folder); returns the runs kept and those left out (identical reruns, a killed run's
    earlier part)."""
    chosen: dict[tuple, list[RunResult]] = {}
    for result in results:
        chosen.setdefault((result.task, result.config_key, result.seed), []).append(result)
    kept, left_out = [], []
    for same in chosen.values():
        same.sort(key=lambda r: (r.finished, r.last_step, _mtime(r.path)), reverse=True)
        kept.append(same[0])
        left_out += same[1:]
    return kept, left_out


def _mtime(path: Path) -> float:
    try:
        return (path / "hparams.yaml").stat().st_mtime
    except OSError:
        return 0.0


def _differing(configs: Sequence[dict], skip=lambda key: False) -> list[str]:
    keys = sorted({k for c in configs for k in c if not skip(k)})
    return [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]


def method_labels(results: Sequence[RunResult]) -> dict[str, str]:
    """A short label per configuration (settings hash): the adapter type, plus the adapter fields
    that tell apart configs of the same type (``lora (r=4)``, ``lora (r=8)``), plus the other
    settings that tell apart configurations of one task and adapter (``lora (lr=0.001)``)."""
    adapters = {r.method_key: r.adapter for r in results}
    adapter_labels = {}
    for key, config in adapters.items():
        kind = config.get("adapter_type", "?")
        same = [c for c in adapters.values() if c.get("adapter_type") == kind]
        details = ", ".join(f"{n}={config.get(n)}" for n in _differing(same))
        adapter_labels[key] = f"{kind} ({details})" if details else kind
    labels = {}
    for result in results:
        rivals = [
            r.settings
            for r in results
            if r.task == result.task and r.method_key == result.method_key
        ]
        extra = [
            f"{k.rsplit('.', 1)[-1]}={result.settings.get(k)}"
            for k in _differing(rivals, skip=lambda k: k.startswith("model.adapter"))
        ]
        label = adapter_labels[result.method_key]
        if extra:
            label = (
                f"{label[:-1]}, {', '.join(extra)})"
                if label.endswith(")")
                else f"{label} ({', '.join(extra)})"
            )
        labels[result.config_key] = label
    return labels


def group(results: Sequence[RunResult]) -> list[Cell]:
    """The cells: runs of one task and one configuration (adapter and settings), one per seed."""
    labels = method_labels(results)
    cells: dict[tuple[str, str], Cell] = {}
    for result in _with_other_splits(results):
        key = (result.task, result.config_key)
        if key not in cells:
            cells[key] = Cell(result.task, labels[result.config_key], result.metric, [])
        cells[key].runs.append(result)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: (r.seed is None, r.seed, str(r.path)))
    return list(cells.values())


def _with_other_splits(results: Sequence[RunResult]) -> list[RunResult]:
    """``results``, each followed by one result per other evaluation split of its run, as the
    task ``"<task> <split>"`` (its own table column): the same run and checkpoint, that split's
    score."""
    out = []
    for result in results:
        out.append(result)
        for split, (tag, value, curve) in result.other_splits.items():
            out.append(
                replace(result, task=f"{result.task} {split}", metric=tag, best=value,
                        curve=curve, baseline=None, other_splits={})
            )  # fmt: skip
    return out
