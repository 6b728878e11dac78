"""Write the adapter (``save_adapter``) next to the logs when fit ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ssmlora_app.adapters import save_adapter


class ExportAdapter(L.Callback):
    """Save the adapter and head to ``<log_dir>/<dirname>`` at the end of ``fit`` (with the class
    names, when the task has them, under ``ssmlora.label_names`` in adapter_config.json)."""

    def __init__(self, dirname: str = "adapter"):
        """
        Args:
            dirname: Folder name under the run's log directory.
        """
        self.dirname = dirname

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        root = Path(
            trainer.log_dir or trainer.default_root_dir
        )  # a collective: every rank calls it
        if not trainer.is_global_zero:
            return
        backbone = getattr(pl_module, "backbone_config", None)
        name = getattr(backbone, "name_or_path", None)
        info = getattr(pl_module, "task_info", None)
        names = getattr(info, "label_names", None)
        path = save_adapter(
            pl_module.model,
            root / self.dirname,
            base_model_name_or_path=name,
            metadata={"label_names": list(names)} if names else None,
        )
        rank_zero_info(f"Adapter saved to {path}")
