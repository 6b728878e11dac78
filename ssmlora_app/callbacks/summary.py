"""Print the final validation metrics next to the majority-class baseline."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class FitSummary(L.Callback):
    """At the end of ``fit``, print each logged validation metric and the majority-class accuracy,
    so a run shows at a glance whether it beat chance."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if not metrics:
            return
        lines = [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items())]
        datamodule = trainer.datamodule
        baseline = (
            datamodule.majority_baseline() if hasattr(datamodule, "majority_baseline") else None
        )
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
