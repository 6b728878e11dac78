"""The results ``ssmlora report`` reads: each run's best validation score of its task's headline
metric (the papers' GLUE protocol), and the cells of seeds that share a task and an adapter
config."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ssmlora_app.run import RunFolder

LOWER_IS_BETTER = ("mse", "loss")


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

    @property
    def method_key(self) -> str:
        return json.dumps(self.adapter, sort_keys=True)


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


def read_run(folder: RunFolder) -> RunResult | None:
    """The result of one run folder; None when it has no hparams.yaml or no headline metric yet."""
    if not folder.hparams_path.is_file():
        return None
    record = folder.record()
    info = record.task_info
    if not info.metrics or not info.eval_splits:
        return None
    metric = info.metrics[0]
    tag = f"{info.eval_splits[0].replace('validation', 'val')}/{metric}"
    scalars = folder.scalars()
    curve = scalars.get(tag)
    if not curve:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    best_step, best = pick(curve, key=lambda point: point[1])
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
    )


def method_labels(results: Sequence[RunResult]) -> dict[str, str]:
    """A short label per adapter config: its type, plus the fields that tell apart configs of
    the same type (``lora (r=4)``, ``lora (r=8)``)."""
    configs = {r.method_key: r.adapter for r in results}
    labels = {}
    for key, config in configs.items():
        kind = config.get("adapter_type", "?")
        same = [c for c in configs.values() if c.get("adapter_type") == kind]
        differing = sorted(
            name for name in config if len({json.dumps(c.get(name)) for c in same}) > 1
        )
        details = ", ".join(f"{name}={config.get(name)}" for name in differing)
        labels[key] = f"{kind} ({details})" if details else kind
    return labels


def group(results: Sequence[RunResult]) -> list[Cell]:
    labels = method_labels(results)
    cells: dict[tuple[str, str], Cell] = {}
    for result in results:
        key = (result.task, result.method_key)
        if key not in cells:
            cells[key] = Cell(result.task, labels[result.method_key], result.metric, [])
        cells[key].runs.append(result)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: (r.seed is None, r.seed, str(r.path)))
    return list(cells.values())
