"""Tasks: name -> task definition, and the data module that serves them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.base import Task, TaskInfo
from ssmlora_app.tasks.byte_lm import ByteLMTask
from ssmlora_app.tasks.custom import CustomTask
from ssmlora_app.tasks.glue import GLUE_TASKS
from ssmlora_app.tasks.longctx import NarrativeQATask, QMSumTask, QualityTask
from ssmlora_app.tasks.state_tracking import (
    DFATask,
    ParityTask,
    WordProblemCSVTask,
    WordProblemTask,
)
from ssmlora_app.tasks.superglue import SUPERGLUE_TASKS
from ssmlora_app.tasks.synthetic import WordSentimentTask

TASKS: Mapping[str, Task] = MappingProxyType(
    {
        **GLUE_TASKS,
        **SUPERGLUE_TASKS,
        "quickstart": WordSentimentTask(),
        "dfa": DFATask(),
        "parity": ParityTask(),
        "word_problem": WordProblemTask(),
        "word_problem_csv": WordProblemCSVTask(),
        "byte_lm": ByteLMTask(),
        "quality": QualityTask(),
        "qmsum": QMSumTask(),
        "narrativeqa": NarrativeQATask(),
        "custom": CustomTask(),
    }
)


def get_task(name: str, task_args: dict | None = None) -> Task:
    """The task ``name``, with ``task_args`` replacing fields of its (dataclass) definition."""
    try:
        task = TASKS[name]
    except KeyError:
        raise SsmloraError(f"Unknown task {name!r}; known tasks: {', '.join(TASKS)}.") from None
    if not task_args:
        return task
    known = {f.name for f in dataclasses.fields(task)} if dataclasses.is_dataclass(task) else set()
    unknown = sorted(set(task_args) - known)
    if unknown:
        raise SsmloraError(
            f"data.task_args has {unknown}, which task {name!r} does not take; it takes "
            f"{sorted(known - {'name'}) or 'none'}."
        )
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in task_args.items()}
    try:
        return dataclasses.replace(task, **args)
    except (TypeError, ValueError) as err:
        raise SsmloraError(f"data.task_args for {name!r}: {err}") from None


__all__ = ["TASKS", "Task", "TaskInfo", "get_task"]
