"""Log SSMLoRA's per-chain state norms and ``ρ(I + W_c)`` to the trainer's loggers."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from ssmlora_app.adapters.ssmlora import SSMLoRALinear
from ssmlora_app.adapters.ssmlora_stats import ssmlora_diagnostics


class SSMLoRADiagnostics(L.Callback):
    """Every ``every_n_steps`` optimizer steps, log :func:`ssmlora_diagnostics` of
    ``pl_module.model`` (state norms of the last training forward, spectral radius of
    ``I + W_c`` per chain) under ``ssmlora/<chain>/...``. Does nothing, with one warning, for a
    model without SSMLoRA."""

    def __init__(self, every_n_steps: int = 50):
        """
        Args:
            every_n_steps: Log when the optimizer step count is a multiple of this.
        """
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._last_step = -1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        self._enabled = any(isinstance(m, SSMLoRALinear) for m in model.modules())
        if not self._enabled:
            rank_zero_warn("SSMLoRADiagnostics: the model has no SSMLoRA layers; not logging.")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self._enabled or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        metrics = ssmlora_diagnostics(getattr(pl_module, "model", pl_module))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
