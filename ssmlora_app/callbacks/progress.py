"""What the trainer prints while it runs: the progress bar without the logger's version, and the
parameter counts in one line."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelSummary, RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.utilities import rank_zero_info


class _WithoutVersion:
    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the run folder's version, printed as a number: noise
        return items


class RichBar(_WithoutVersion, RichProgressBar):
    """Lightning's rich progress bar, without ``v_num``, and without an epoch total when the fit
    is bounded by steps (``max_epochs: -1``: Lightning printed "Epoch 0/-2")."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs < 0:
            description = description.replace(f"/{max_epochs - 1}", "", 1)
            description = f"{description:{len(self.validation_description)}}"  # as Lightning pads
        return description


class TQDMBar(_WithoutVersion, TQDMProgressBar):
    """Lightning's tqdm progress bar, without ``v_num``."""


def quiet_progress_bar() -> RichBar | TQDMBar:
    """The progress bar Lightning would pick (rich when installed), without ``v_num``."""
    return RichBar() if _RICH_AVAILABLE else TQDMBar()


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


class ParameterSummary(ModelSummary):
    """One line at the start of fit: trainable parameters (adapter and head), frozen, total; in
    place of Lightning's module table (whose FLOPs column reads 0 without a probe input)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        counts = getattr(pl_module, "parameter_counts", None)
        if counts is None:
            return super().on_fit_start(trainer, pl_module)
        counts = counts()
        trainable, adapter = counts["params/trainable"], counts["params/adapter"]
        total = counts["params/total"]
        rank_zero_info(
            f"Parameters: {_count(trainable)} trainable (adapter {_count(adapter)}, head "
            f"{_count(trainable - adapter)}), {_count(total - trainable)} frozen, "
            f"{_count(total)} total"
        )
        return None
