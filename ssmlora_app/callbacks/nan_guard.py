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
    until ``max_skips`` batches were skipped.

    Stopping costs no host-device synchronisation per step: the first non-finite loss (step,
    epoch, value) is recorded on the loss's device, and read back only when Lightning logs
    (every ``trainer.log_every_n_steps``, where it synchronises anyway), at the end of each
    epoch and of training, and before any checkpoint is written, which is then refused. So a
    run stops at most ``log_every_n_steps`` steps after its first bad one, with that step named.
    Skipping has to decide before each optimizer step, so it reads the loss every step.
    """

    def __init__(self, skip_batches: bool = False, max_skips: int = 10):
        """
        Args:
            skip_batches: Drop the gradients of a batch with a non-finite loss and continue
                (reads the loss on the host every step, a synchronisation on GPUs).
            max_skips: Stop anyway after this many skipped batches.
        """
        self.skip_batches = skip_batches
        self.max_skips = max_skips
        self.skipped = 0
        self._bad_loss: float | None = None
        self._first_at: torch.Tensor | None = None
        """``(2,)`` int64 on the loss's device: step and epoch of the first non-finite loss
        (−1 while there is none)."""
        self._first_loss: torch.Tensor | None = None
        """``()`` float32 on the loss's device: that loss."""

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        loss = loss.detach()
        if self.skip_batches:
            value = float(loss)
            self._bad_loss = None if math.isfinite(value) else value
            return
        # Device ops only (fills, no host-to-device copies): int64 and float32, which every
        # accelerator has (MPS has no float64).
        kw = {"dtype": torch.long, "device": loss.device}
        at = torch.stack(
            (torch.full((), trainer.global_step, **kw), torch.full((), trainer.current_epoch, **kw))
        )
        if self._first_at is None:
            self._first_at = torch.full((2,), -1, **kw)
            self._first_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        first = (self._first_at[0] < 0) & ~torch.isfinite(loss)
        self._first_at = torch.where(first, at, self._first_at)
        self._first_loss = torch.where(first, loss.float(), self._first_loss)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._raise_if_bad()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._raise_if_bad()

    def on_train_end(self, trainer, pl_module) -> None:
        self._raise_if_bad()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._raise_if_bad()  # raised before anything is written: the old files stay as they are

    def _raise_if_bad(self) -> None:
        if self._first_at is None:
            return
        step, epoch = self._first_at.tolist()  # the one host read (a synchronisation)
        if step >= 0:
            self._fail(step, epoch, self._first_loss.item())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._bad_loss is None:
            return
        step, loss = trainer.global_step, self._bad_loss
        self._bad_loss = None
        if self.skipped < self.max_skips:
            self.skipped += 1
            optimizer.zero_grad(set_to_none=True)  # the step then leaves every parameter as it is
            rank_zero_warn(f"Loss is {loss} at step {step}: batch skipped ({self.skipped} so far).")
            return
        self._fail(step, trainer.current_epoch, loss)

    def _fail(self, step: int, epoch: int, loss: float) -> None:
        raise NonFiniteLossError(
            f"The training loss is {loss} at optimizer step {step} (epoch {epoch}). Training "
            "stopped; the checkpoints written before this step are kept. Remedies: lower the "
            "learning rate, add gradient clipping (trainer.gradient_clip_val: 1.0), use "
            "bf16-mixed instead of 16-mixed, check the data for empty or extreme inputs, or set "
            "nan_guard.skip_batches: true to skip such batches."
        )
