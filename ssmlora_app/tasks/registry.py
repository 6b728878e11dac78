"""Built-in task names (the short form ``data.task: sst2``) -> the task with its defaults.

Each task file registers its names when imported (``register_task(...)`` at its end);
``ssmlora_app/tasks/__init__.py`` imports the built-in ones, one line each. A task given by
class (``class_path`` + ``init_args``) needs no name here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task

_TASKS: dict[str, Callable[[], Task]] = {}

TASKS: Mapping[str, Callable[[], Task]] = MappingProxyType(_TASKS)
"""Name -> a factory of the task with its default fields (a read-only view)."""


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``name`` a short form of ``factory()`` (a task class, or a partial of one)."""
    known = _TASKS.get(name)
    if known is not None and known != factory:
        raise ValueError(f"Task name {name!r} is taken.")
    _TASKS[name] = factory


def get_task(name: str) -> Task:
    """The built-in task ``name`` with its default fields."""
    try:
        factory = _TASKS[name]
    except KeyError:
        raise SsmloraError(
            f"Unknown task {name!r}; built-in tasks: {', '.join(_TASKS)}; or give a task class "
            "(data.task.class_path, e.g. ssmlora_app.tasks.CustomTask)."
        ) from None
    return factory()
