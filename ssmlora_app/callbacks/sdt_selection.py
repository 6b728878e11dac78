"""SDT's dimension selection inside one ``fit`` (spec §3): warm up, score, select, continue."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from ssmlora_app.adapters.inject import adapter_config
from ssmlora_app.adapters.sdt import IDLE, WARMUP, sdt_phase, select_dimensions, start_warmup

log = logging.getLogger(__name__)


class SDTSelection(L.Callback):
    """Drives an SDT adapter's phases (see :mod:`ssmlora_app.adapters.sdt`); does nothing for
    other adapters or an adapter whose dimensions are already selected (e.g. loaded from a file).

    * ``setup`` (fit): a freshly injected adapter enters the warm-up (dense ``ΔA_log`` + LoRA),
      before the optimizer is built, so the optimizer gets the warm-up parameters.
    * After ``warmup_steps`` optimizer steps: select the dimensions, restore the pretrained
      weights, and rebuild the optimizer and LR schedule for the sparse deltas + LoRA; the schedule
      then spans the remaining steps. The selection goes to the log and to TensorBoard
      (``sdt/selection`` text, ``sdt/channel_scores`` histograms).
    * Resuming: the phase and the masks are buffers in the checkpoint, so a run resumed during the
      warm-up finishes it and selects at the same step, and one resumed after it keeps its masks.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and sdt_phase(_model(pl_module)) == IDLE:
            start_warmup(_model(pl_module))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_select(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self._maybe_select(trainer, pl_module)

    def _maybe_select(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = _model(pl_module)
        if sdt_phase(model) != WARMUP:
            return
        config = adapter_config(model)
        if trainer.global_step < config.warmup_steps:
            return
        selection = select_dimensions(model, num_zero=config.num_zero)
        trainer.strategy.setup_optimizers(trainer)  # the optimizer gets θ instead of ΔA_log
        lines = [f"{name}: {s.describe()}" for name, s in selection.items()]
        log.info(
            "SDT: dimensions selected after %d warm-up steps:\n  %s",
            trainer.global_step,
            "\n  ".join(lines),
        )
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics({"sdt/selected_at_step": float(step)}, step=step)
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                writer.add_text("sdt/selection", "\n\n".join(lines), step)
                for name, s in selection.items():
                    writer.add_histogram(f"sdt/channel_scores/{name}", s.channel_scores, step)


def _model(pl_module: L.LightningModule):
    return getattr(pl_module, "model", pl_module)
