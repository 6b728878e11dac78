"""Task metrics with torchmetrics, by name. Classification metrics take class-id predictions."""

from __future__ import annotations

from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MatthewsCorrCoef,
    MulticlassAccuracy,
)
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef


def _metric(name: str, num_labels: int) -> Metric:
    if name == "accuracy":
        # micro = the fraction of correct predictions (torchmetrics defaults to macro)
        return MulticlassAccuracy(num_classes=num_labels, average="micro")
    if name == "f1":
        return BinaryF1Score()
    if name == "mcc":
        return MatthewsCorrCoef(task="multiclass", num_classes=num_labels)
    if name == "pearson":
        return PearsonCorrCoef()
    if name == "spearman":
        return SpearmanCorrCoef()
    if name == "mse":
        return MeanSquaredError()
    raise ValueError(f"unknown metric {name!r}")


def build_metrics(names: tuple[str, ...], num_labels: int, prefix: str) -> MetricCollection:
    """A fresh collection (one per stage and dataloader), logged as ``{prefix}/{name}``."""
    return MetricCollection({n: _metric(n, num_labels) for n in names}, prefix=f"{prefix}/")
