"""Checks of a fit's numeric trainer and checkpoint settings that Lightning and torch take without
a word and then fail on mid-run (a division by zero at the first step, a stack trace when the
callbacks are built) or follow silently into a wrong result (a negative gradient-clipping value
turns every update around). Each is one ``ssmlora: error:`` line before any work."""

from __future__ import annotations

from numbers import Number

from jsonargparse import Namespace

from ssmlora_app.errors import SsmloraError


def _number(value) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def check_fit_values(config: Namespace) -> None:
    """``trainer.accumulate_grad_batches`` ≥ 1, ``val_check_interval`` and
    ``check_val_every_n_epoch`` > 0, ``gradient_clip_val`` ≥ 0, ``checkpoint.every_n_*`` ≥ 0."""
    trainer = config.get("trainer") or Namespace()
    accumulate = trainer.get("accumulate_grad_batches")
    if _number(accumulate) and accumulate < 1:
        raise SsmloraError(
            f"trainer.accumulate_grad_batches={accumulate}: give 1 (no accumulation) or more "
            "batches per optimizer step."
        )
    interval = trainer.get("val_check_interval")
    if _number(interval) and interval <= 0:
        raise SsmloraError(
            f"trainer.val_check_interval={interval}: give a fraction of an epoch in (0, 1] or a "
            "number of batches ≥ 1."
        )
    every_epochs = trainer.get("check_val_every_n_epoch")
    if _number(every_epochs) and every_epochs < 1:
        raise SsmloraError(
            f"trainer.check_val_every_n_epoch={every_epochs}: give 1 or more (or null with an "
            "integer trainer.val_check_interval); trainer.limit_val_batches=0 skips validation."
        )
    clip = trainer.get("gradient_clip_val")
    if _number(clip) and clip < 0:
        raise SsmloraError(
            f"trainer.gradient_clip_val={clip} would scale every gradient by a negative factor "
            "(an update uphill): give a positive norm, or 0 / null for no clipping."
        )
    checkpoint = config.get("checkpoint") or Namespace()
    for key in ("every_n_train_steps", "every_n_epochs"):
        value = checkpoint.get(key)
        if _number(value) and value < 0:
            raise SsmloraError(f"checkpoint.{key}={value}: give 0 (off) or more.")
