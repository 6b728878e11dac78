"""Print the final validation metrics next to the majority-class baseline."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

BASELINE = "majority_baseline"
"""Tag (under the first evaluation split's prefix) of the majority-class accuracy."""


class FitSummary(L.Callback):
    """At the end of ``fit``, print each logged validation metric and the majority-class accuracy,
    so a run shows at a glance whether it beat chance. The majority-class accuracy of the first
    evaluation split is also logged when training starts (``val/majority_baseline``, MNLI
    ``val_matched/majority_baseline``): ``ssmlora report`` marks a run whose score stays there as
    collapsed."""

    def __init__(self) -> None:
        self._baseline: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "majority_baseline"):
            return
        self._baseline = datamodule.majority_baseline()
        if self._baseline is None or not trainer.is_global_zero:
            return
        split = pl_module.task_info.eval_splits[0].replace("validation", "val")
        for logger in trainer.loggers:
            logger.log_metrics({f"{split}/{BASELINE}": self._baseline}, step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if not metrics:
            return
        lines = [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items())]
        baseline = self._baseline
        if baseline is not None:
            lines.append(f"  majority-class accuracy (chance) = {baseline:.4f}")
        rank_zero_info("Final validation metrics:\n" + "\n".join(lines) + _where(trainer))


def _where(trainer: L.Trainer) -> str:
    """Where the run's files are: its folder (config, checkpoints, adapter) and TensorBoard."""
    if trainer.logger is None or trainer.log_dir is None:
        return ""
    run = Path(trainer.log_dir)
    lines = [f"Run folder: {run} (config.yaml, checkpoints/, adapter/)"]
    save_dir = getattr(trainer.logger, "save_dir", None)
    if save_dir is not None:
        lines.append(f"TensorBoard: tensorboard --logdir {save_dir}")
    return "\n" + "\n".join(lines)
