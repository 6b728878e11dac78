"""Objectives: how a task is learned and scored (see :mod:`ssmlora_app.objectives.base`).

One import line per objective family registers its classes.
"""

from ssmlora_app.objectives.base import (
    Objective,
    objective_for,
    register_objective,
    resolve_objective,
)

# The built-in objectives: one import each registers them.
from ssmlora_app.objectives.classification import Classification  # isort: skip
from ssmlora_app.objectives.causal_lm import LMChoice, LMGenerate, LMTeacherForced  # isort: skip
from ssmlora_app.objectives.extractive_qa import ExtractiveQA  # isort: skip
from ssmlora_app.objectives.multiple_choice import MultipleChoice  # isort: skip
from ssmlora_app.objectives.label_words import LMLabelWords  # isort: skip

__all__ = [
    "Classification",
    "ExtractiveQA",
    "LMChoice",
    "LMGenerate",
    "LMLabelWords",
    "LMTeacherForced",
    "MultipleChoice",
    "Objective",
    "objective_for",
    "register_objective",
    "resolve_objective",
]
