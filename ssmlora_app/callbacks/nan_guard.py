"""Stop (or skip the batch) when the training loss is not finite."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ssmlora_app.errors import SsmloraError


class NonFiniteLossError(SsmloraError):
    """Training produced a NaN/inf loss."""


class NanGuard(L.Callback):
    """Checks every training loss. By default a NaN/inf loss stops the run with a message naming
    the step (the checkpoints already written are kept untouched: nothing is saved after the bad
    step). With ``skip_batches`` the batch's gradients are dropped instead and training goes on,
    until ``max_skips`` batches were skipped."""

    def __init__(self, skip_batches: bool = False, max_skips: int = 10):
        """
        Args:
            skip_batches: Drop the gradients of a batch with a non-finite loss and continue.
            max_skips: Stop anyway after this many skipped batches.
        """
        self.skip_batches = skip_batches
        self.max_skips = max_skips
        self.skipped = 0
        self._bad_loss: float | None = None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        self._bad_loss = None if math.isfinite(value) else value

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._bad_loss is None:
            return
        step, loss = trainer.global_step, self._bad_loss
        self._bad_loss = None
        if self.skip_batches and self.skipped < self.max_skips:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # the step then leaves every parameter as it is
            rank_zero_warn(f"Loss is {loss} at step {step}: batch skipped ({self.skipped} so far).")
            return
        raise NonFiniteLossError(
            f"The training loss is {loss} at optimizer step {step} (epoch {trainer.current_epoch}). "
            "Training stopped; the checkpoints written before this step are kept. Remedies: lower "
            "the learning rate, add gradient clipping (trainer.gradient_clip_val: 1.0), use "
            "bf16-mixed instead of 16-mixed, check the data for empty or extreme inputs, or set "
            "nan_guard.skip_batches: true to skip such batches."
        )
