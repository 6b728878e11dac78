"""The README's task table is true: each task name it gives is a registered task, each config it
names exists, and every registered task appears in it (or in the GLUE / SuperGLUE rows)."""

import itertools
import re

from ssmlora_app.tasks import TASKS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _task_rows() -> list[list[str]]:
    table = README.split("| task | `data.task` | a config |")[1].split("\n\n")[0]
    rows = [line.split(" | ") for line in table.strip().splitlines()[1:]]
    assert len(rows) >= 10 and all(len(r) == 3 for r in rows), rows
    return rows


def _expand(pattern: str) -> list[str]:
    """``a_{x,y}.yaml`` -> ``a_x.yaml``, ``a_y.yaml`` (every brace group, as the shell does)."""
    parts = re.split(r"\{([^}]*)\}", pattern)
    options = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(choice) for choice in itertools.product(*options)]


def test_the_readme_task_table_names_registered_tasks_and_existing_configs():
    named, configs = set(), []
    for _, names, config in _task_rows():
        named |= {n for n in re.findall(r"`([a-z0-9_]+)`", names)}
        for path in re.findall(r"`([\w/{},<>.-]+\.yaml)", config):
            configs += [] if "<" in path else _expand(path)
    assert named <= set(TASKS), sorted(named - set(TASKS))
    missing = [c for c in configs if not (REPO / "configs" / c).is_file()]
    assert configs and not missing, missing
    glue = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    superglue = {"boolq", "cb", "copa", "multirc", "superglue_rte", "wic", "wsc"}
    # the quickstart's generated sentiment task (its own README section); word problems from CSV
    # (the word_problem row's file form)
    left = set(TASKS) - named - glue - superglue
    assert left <= {"quickstart", "word_problem_csv"}, sorted(left)
