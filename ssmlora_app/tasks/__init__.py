"""Tasks: name -> task definition, and the data module that serves them."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task, TaskInfo
from ssmlora_app.tasks.glue import GLUE_TASKS
from ssmlora_app.tasks.synthetic import WordSentimentTask

TASKS: Mapping[str, Task] = MappingProxyType({**GLUE_TASKS, "quickstart": WordSentimentTask()})


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise SsmloraError(f"Unknown task {name!r}; known tasks: {', '.join(TASKS)}.") from None


__all__ = ["TASKS", "Task", "TaskInfo", "get_task"]
