"""What a run leaves behind: its record and its folder (the one reader of both)."""

from ssmlora_app.run.folder import RunFolder, read_checkpoint, task_from_config
from ssmlora_app.run.record import RunRecord

__all__ = ["RunFolder", "RunRecord", "read_checkpoint", "task_from_config"]
