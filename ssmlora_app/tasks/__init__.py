"""Tasks: typed classes chosen by ``class_path`` (``data.task: {class_path:
ssmlora_app.tasks.DFATask, init_args: {...}}``), or a built-in name for the defaults
(``data.task: sst2``); and the data module that serves them.

Adding a task is one file defining a :class:`Task` subclass (a dataclass whose fields are its
options) that calls ``register_task(name, cls)`` for its short name, plus one import line below.
"""

from ssmlora_app.tasks.base import Task, TaskInfo
from ssmlora_app.tasks.registry import TASKS, get_task, register_task

# The built-in tasks: one import each registers their names.
from ssmlora_app.tasks.glue import GlueTask  # isort: skip
from ssmlora_app.tasks.superglue import SuperGlueTask  # isort: skip
from ssmlora_app.tasks.synthetic import WordSentimentTask  # isort: skip
from ssmlora_app.tasks.state_tracking import (  # isort: skip
    DFATask,
    ParityTask,
    WordProblemCSVTask,
    WordProblemTask,
)
from ssmlora_app.tasks.byte_lm import ByteLMTask  # isort: skip
from ssmlora_app.tasks.longctx import NarrativeQATask, QMSumTask, QualityTask  # isort: skip
from ssmlora_app.tasks.custom import CustomTask  # isort: skip
from ssmlora_app.tasks.squad import SquadTask  # isort: skip
from ssmlora_app.tasks.race import RaceTask  # isort: skip
from ssmlora_app.tasks.dart import DartTask  # isort: skip
from ssmlora_app.tasks.samsum import SamSumTask  # isort: skip
from ssmlora_app.tasks.spider import SpiderTask  # isort: skip
from ssmlora_app.tasks.leval_exam import LEvalExamTask  # isort: skip
from ssmlora_app.tasks.arithmetic import AdditionTask  # isort: skip

__all__ = [
    "TASKS",
    "AdditionTask",
    "ByteLMTask",
    "CustomTask",
    "DFATask",
    "DartTask",
    "GlueTask",
    "LEvalExamTask",
    "NarrativeQATask",
    "ParityTask",
    "QMSumTask",
    "QualityTask",
    "RaceTask",
    "SamSumTask",
    "SpiderTask",
    "SquadTask",
    "SuperGlueTask",
    "Task",
    "TaskInfo",
    "WordProblemCSVTask",
    "WordProblemTask",
    "WordSentimentTask",
    "get_task",
    "register_task",
]
