"""Log each HRM layer's gate and the distribution of its decay rates ``Ā`` during training."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from ssmlora_app.adapters.hrm import hrm_diagnostics


class HRMDiagnostics(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and at the end of each training epoch), log
    ``hrm/gate/<layer>`` as scalars to every logger and, to TensorBoard, histograms of ``|Ā|``
    (``hrm/A_bar`` over all layers, ``hrm/A_bar/<layer>`` per layer; near 1 is long memory).
    Does nothing for a model without HRM layers."""

    def __init__(self, every_n_steps: int = 50, per_layer_histograms: bool = True):
        """
        Args:
            every_n_steps: Logging interval in optimizer steps.
            per_layer_histograms: Also write one ``Ā`` histogram per layer.
        """
        self.every_n_steps = every_n_steps
        self.per_layer_histograms = per_layer_histograms
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.log_diagnostics(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.log_diagnostics(trainer, pl_module)

    def log_diagnostics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the current gates and ``Ā`` histograms at ``trainer.global_step``."""
        self._last_step = step = trainer.global_step
        if not trainer.is_global_zero:
            return
        stats = hrm_diagnostics(getattr(pl_module, "model", pl_module))
        if not stats:
            return
        gates = {f"hrm/gate/{name}": s.gate for name, s in stats.items()}
        for logger in trainer.loggers:
            logger.log_metrics(gates, step=step)
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                writer.add_histogram(
                    "hrm/A_bar", torch.cat([s.decay for s in stats.values()]), step
                )
                if self.per_layer_histograms:
                    for name, s in stats.items():
                        writer.add_histogram(f"hrm/A_bar/{name}", s.decay, step)
