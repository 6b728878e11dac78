"""Output folders of the commands (predictions, exports, imports, reports): checked before any work,
never a file, never overwritten silently."""

from __future__ import annotations

import os
from pathlib import Path

from ssmlora_app.errors import SsmloraError


def check_output_dir(
    path: str | os.PathLike, option: str, overwrite: bool | None = False, flag: str = "--overwrite"
) -> Path:
    """``path`` as a folder a command may write: not a file, inside a writable folder, and empty
    unless ``overwrite`` (None: an existing folder's files are fine, e.g. a report rewritten).
    ``option`` and ``flag`` name the command's own options in the one-line errors."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise SsmloraError(f"{option}={path} is a file, not a folder: choose a folder.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SsmloraError(f"{option}={path}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SsmloraError(f"{option}={path}: {existing} is not writable.")
    if overwrite is False and path.is_dir():
        held = sorted(p.name for p in path.iterdir())
        if held:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise SsmloraError(
                f"{option}={path} already holds {shown}: choose a new folder, or pass {flag} true "
                "to replace what this command writes there."
            )
    return path
