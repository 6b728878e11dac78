"""Checkpoint files written atomically (see :mod:`ssmlora_app.atomic`), so a crash or kill while
saving never leaves a truncated ``last.ckpt`` behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from ssmlora_app.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with temp-file + rename writes (local file systems)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):  # remote file systems: fall back to Lightning's writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(
            Path(path),
            lambda tmp: super(AtomicCheckpointIO, self).save_checkpoint(
                checkpoint, tmp, storage_options
            ),
        )
        return None
