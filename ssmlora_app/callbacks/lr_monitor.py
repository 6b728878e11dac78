"""Lightning's learning-rate monitor, silent when logging is switched off (``trainer.logger: false``)
instead of stopping the run."""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor


class LRMonitor(LearningRateMonitor):
    """Logs each parameter group's learning rate (see ``LearningRateMonitor``) when a logger exists."""

    def on_train_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)
