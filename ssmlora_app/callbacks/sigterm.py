"""Save a checkpoint when the run is asked to stop (SIGTERM from a scheduler, ``docker stop``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ssmlora_app.run import RunFolder

SIGTERM_EXIT_CODE = 143
"""Exit code of a run stopped by SIGTERM (128 + 15, what a shell reports for a process the signal
ended, and what ``docker stop`` and Kubernetes show): a scheduler tells pre-emption (requeue it,
``--ckpt_path .../last.ckpt`` resumes) from completion (0) and bad input (2)."""


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM, Lightning finishes the current batch and raises ``SIGTERMException``; during a
    fit this writes ``last.ckpt`` into the run's checkpoint folder first, then the command exits
    with :data:`SIGTERM_EXIT_CODE`. Evaluations just stop (with the same code)."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath:
            directory = Path(checkpoint.dirpath)
        else:
            directory = RunFolder(Path(trainer.log_dir or trainer.default_root_dir)).checkpoints_dir
        path = directory / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        trainer.save_checkpoint(path)
        rank_zero_info(
            f"SIGTERM: checkpoint saved to {path}; exiting with code {SIGTERM_EXIT_CODE} (resume "
            f"with --ckpt_path {path})"
        )
