"""What a run leaves behind: its record, its folder (the one reader of both) and its checkpoints."""

from ssmlora_app.run.checkpoint import (
    CheckpointInfo,
    check_fits,
    inspect_checkpoint,
    load_checkpoint,
    read_checkpoint,
)
from ssmlora_app.run.folder import RunFolder, task_from_config
from ssmlora_app.run.record import RunRecord

__all__ = [
    "CheckpointInfo",
    "RunFolder",
    "RunRecord",
    "check_fits",
    "inspect_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "task_from_config",
]
