"""Write the adapter (``save_adapter``) next to the logs when fit ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ssmlora_app.adapters import save_adapter
from ssmlora_app.errors import SsmloraError
from ssmlora_app.run import RunFolder


class ExportAdapter(L.Callback):
    """Save the adapter and head to ``<log_dir>/<dirname>`` at the end of ``fit`` (with the class
    names, when the task has them, under ``ssmlora.label_names`` in adapter_config.json): the
    run's result. A fit that trained no step (e.g. stopped by ``max_time`` before its first)
    writes none and fails: an untrained adapter is never saved as a result."""

    def __init__(self, dirname: str = "adapter"):
        """
        Args:
            dirname: Folder name under the run's log directory (``adapter``, the run folder's
                adapter, what ``ssmlora export --run`` reads).
        """
        self.dirname = dirname
        self._first_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_step = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = RunFolder(Path(trainer.log_dir or trainer.default_root_dir))  # a collective
        if self._first_step is None or trainer.global_step == self._first_step:
            raise SsmloraError(
                f"The fit trained no step (global step {trainer.global_step}): no adapter is "
                "written, the untrained one is not a result. Check trainer.max_time, "
                "limit_train_batches and the callbacks that stop training."
            )
        if not trainer.is_global_zero:
            return
        name = pl_module.backbone_config.name_or_path
        names = pl_module.task_info.label_names
        path = save_adapter(
            pl_module.model,
            folder.path / self.dirname,
            base_model_name_or_path=name,
            metadata={"label_names": list(names)} if names else None,
        )
        rank_zero_info(f"Adapter saved to {path}")
