"""Save a checkpoint when the run is asked to stop (SIGTERM from a scheduler, ``docker stop``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ssmlora_app.run import RunFolder


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM, Lightning finishes the current batch and raises ``SIGTERMException``; this
    writes ``last.ckpt`` into the checkpoint folder first, so ``--ckpt_path last`` resumes there."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath:
            directory = Path(checkpoint.dirpath)
        else:
            directory = RunFolder(Path(trainer.log_dir or trainer.default_root_dir)).checkpoints_dir
        path = directory / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: checkpoint saved to {path}")
