"""Files written atomically: to a temporary name in the same folder, then renamed over the target,
so an interrupted write (a crash, a kill, a full disk) never leaves a truncated file behind and
the previous version stays intact until the new one is complete.

Writers that create their file with mode 0600 whatever the umask (``safetensors``' ``save_file``,
and so ``save_pretrained``) would leave adapters and merged models unreadable to the group, another
user or a Docker volume's uid: every file written here gets the mode the umask gives a new file
(``0o666 & ~umask``, e.g. 0644), as ``torch.save`` and ``open`` do; :func:`respect_umask` does the
same for the files of a folder another library wrote.
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
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, racing other threads)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open`` gives a new file under the process's umask (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def respect_umask(folder: str | os.PathLike) -> None:
    """Give every file under ``folder`` :func:`new_file_mode` (after a library wrote them 0600)."""
    mode = new_file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)
