"""Lightning's ``ModelCheckpoint``, with ``last.ckpt`` always the state at the end of fit."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same options, under ``checkpoint`` in the config) whose ``last.ckpt``
    is the final state when fit ends, whatever ``every_n_train_steps``/``every_n_epochs`` say:
    Lightning's would stay at the last multiple of ``every_n_train_steps`` (step 360 of 378), so
    ``predict --ckpt_path .../last.ckpt`` would use another model than ``adapter/``. A fit that
    trained no step writes none."""

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
