"""Files written atomically: to a temporary name in the same folder, then renamed over the target,
so an interrupted write (a crash, a kill, a full disk) never leaves a truncated file behind and
the previous version stays intact until the new one is complete.

The temporary file is created by the writer itself (not ``mkstemp``, which makes it mode 0600),
so the result has the permissions the process's umask gives any new file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)`` and rename the result to ``path``; returns ``path``.

    ``write`` creates the file at the path it is given (``torch.save``, ``safetensors``'
    ``save_file``, ``Path.write_text``). On any error the temporary file is removed and the old
    ``path`` (if any) is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
