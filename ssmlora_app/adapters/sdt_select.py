"""SDT's dimension selection (the SDLoRA paper's warm-up and selection): the end of the warm-up, and the
Lightning callback that runs warm-up, selection and the rest of training inside one ``fit``."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from ssmlora_app.adapters.lora import LoRAWeight
from ssmlora_app.adapters.registry import adapter_config, has_adapter
from ssmlora_app.adapters.sdt_mamba1 import select_mamba1
from ssmlora_app.adapters.sdt_mamba2 import select_mamba2
from ssmlora_app.adapters.sdt_phases import (
    IDLE,
    SELECTED,
    WARMUP,
    LayerSelection,
    mixer_kind,
    sdt_modules,
    sdt_phase,
    start_warmup,
)

log = logging.getLogger(__name__)

SELECTORS = {"mamba": select_mamba1, "mamba2": select_mamba2}


@torch.no_grad()
def select_dimensions(model: nn.Module, num_zero: int | None = None) -> dict[str, LayerSelection]:
    """End the warm-up: score ``I = ΔA_log²``, keep the top channels (Mamba-2: heads and groups)
    and states, write the masks, drop ``ΔA_log``, re-initialise LoRA (the warm-up's updates are
    discarded: the backbone is back to its pretrained weights) and enter ``SELECTED``. The head
    keeps its warm-up training: it is not a pretrained weight. ``num_zero`` defaults to the
    injected config's. Returns the selection per mixer name."""
    if num_zero is None:
        num_zero = getattr(adapter_config(model), "num_zero", 0) if has_adapter(model) else 0
    selection = {}
    for name, mixer in model.named_modules():
        kind = mixer_kind(mixer)
        if kind is None:
            continue
        chosen = SELECTORS[kind](name, mixer, num_zero)
        if chosen is not None:
            selection[name] = chosen
    for module in model.modules():
        if isinstance(module, LoRAWeight):
            module.reset_parameters()
    for module in sdt_modules(model):
        module.set_phase(SELECTED)
    return selection


class SDTSelection(L.Callback):
    """Drives an SDT adapter's phases; added to every run of an SDT model by the method's
    ``callbacks`` hook. Does nothing for an adapter whose dimensions are already selected (e.g.
    loaded from a file).

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


def _model(pl_module: L.LightningModule) -> nn.Module:
    return getattr(pl_module, "model", pl_module)
