"""Log an adapter method's diagnostics during training (its ``diagnostics`` hook)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from ssmlora_app.adapters import adapter_diagnostics


class AdapterDiagnostics(L.Callback):
    """Every ``every_n_steps`` optimizer steps and at the end of each training epoch, log what the
    adapter's method reports about the model (:class:`~ssmlora_app.adapters.Diagnostics`): its
    scalars to every logger, its histograms to TensorBoard. For HRM: each layer's gate
    (``hrm/gate/<layer>``) and its decay rates ``|Ā|`` (``hrm/A_bar``); for SSMLoRA: each chain's
    state norm and ``ρ(I + W_c)`` (``ssmlora/<chain>/...``). Silent for methods without
    diagnostics."""

    def __init__(self, every_n_steps: int = 50, histograms: bool = True):
        """
        Args:
            every_n_steps: Logging interval in optimizer steps.
            histograms: Also write the method's histograms (TensorBoard only).
        """
        self.every_n_steps = every_n_steps
        self.histograms = histograms
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_step:
            self.log_diagnostics(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.log_diagnostics(trainer, pl_module)

    def log_diagnostics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the current diagnostics at ``trainer.global_step``."""
        self._last_step = step = trainer.global_step
        if not trainer.is_global_zero:
            return
        diagnostics = adapter_diagnostics(getattr(pl_module, "model", pl_module))
        if diagnostics is None:
            return
        for logger in trainer.loggers:
            if diagnostics.scalars:
                logger.log_metrics(diagnostics.scalars, step=step)
            if self.histograms and isinstance(logger, TensorBoardLogger):
                for tag, values in diagnostics.histograms.items():
                    logger.experiment.add_histogram(tag, values, step)
