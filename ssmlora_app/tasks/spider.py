"""Spider 1.0 (Yu et al. 2018): a question and a database schema -> SQL; exact set match and
execution accuracy as the official evaluator computes them (taoyds/spider ``evaluation.py``, see
:mod:`ssmlora_app.scoring.spider`), overall and per hardness level.

Prompt as the PEFT-of-SSMs benchmark writes it (furiosa-ai/ssm-peft@6a0a7247
``dataset/spider.py``)::

    Create a sql request for the following question and schema:
    ###Question: <question>\\Schema: <schema>
    ###<sql><eos>

(the ``\\S`` is the benchmark's: a backslash where a line break was meant). The schema lists
each table of ``tables.json`` as ``Name: col type ,  col type ,  foreign: col from table ,
primary: col`` (lower case but the table's name), tables joined by `` | ``. Splits ("tvt", the
benchmark's): ``train`` and ``validation`` are 80% / 20% of the official training questions
(seeded, see :func:`~ssmlora_app.tasks.benchmark.tvt_split`), ``test`` the official dev set.

Scoring needs the Spider folder: ``tables.json`` (schemas, foreign keys) and
``database/<db_id>/<db_id>.sqlite`` (each query is parsed against its database's schema, and run
for execution accuracy). A reference is ``"<gold SQL>\\t<db_id>"``, a line of the official gold
file; predict records carry it as their ``label``.

Where we differ from the benchmark: its target and its scored gold query are lower-cased
(``query.lower()``), which also lower-cases string values and so changes what a query returns;
here they keep the official case unless ``lowercase_sql`` (the benchmark's format) is set. Its
Spider metric is the official script; ours the reproduction (:mod:`ssmlora_app.scoring.spider`,
its knowing differences there). See :mod:`ssmlora_app.tasks.benchmark` for the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import datasets
from lightning.pytorch.utilities import rank_zero_warn

from ssmlora_app.errors import SsmloraError
from ssmlora_app.scoring.spider import LEVELS
from ssmlora_app.tasks.benchmark import (
    SEPARATOR,
    GenerationTask,
    lm_rows,
    read_json_records,
    tvt_split,
)
from ssmlora_app.tasks.benchmark_metrics import SPIDER_REFERENCE_SEPARATOR
from ssmlora_app.tasks.registry import register_task

PROMPT = "Create a sql request for the following question and schema:\n"
"""The benchmark's task prefix."""


def table_text(schema: dict, table: int) -> str:
    """One table of a ``tables.json`` entry as the benchmark writes it (``table_to_str``)."""
    columns = schema["column_names_original"]
    types = schema["column_types"]
    names = schema["table_names_original"]
    own = [(name, kind) for (t, name), kind in zip(columns, types) if t == table]
    primary = [columns[k][1] for k in _flat(schema["primary_keys"]) if columns[k][0] == table]
    foreign = [
        (columns[k2][1], names[columns[k2][0]])
        for k1, k2 in schema["foreign_keys"]
        if columns[k1][0] == table
    ]
    parts = [
        *(f"{n} {t}" for n, t in own),
        "foreign: " + " , ".join(f"{n} from {t}" for n, t in foreign),
        "primary: " + " , ".join(primary),
    ]
    return names[table] + ": " + " ,  ".join(parts).lower()


def _flat(keys: list) -> list[int]:
    """Primary keys: ids, or lists of ids (composite keys, in later ``tables.json`` releases)."""
    return [k for key in keys for k in (key if isinstance(key, list) else [key])]


def schema_text(schema: dict) -> str:
    """A database's tables as the benchmark's prompt lists them."""
    return " | ".join(table_text(schema, t) for t in range(len(schema["table_names_original"])))


@dataclass(frozen=True)
class SpiderTask(GenerationTask):
    """Spider text-to-SQL (short form ``data.task: spider``): exact set match and execution
    accuracy against the SQLite databases."""

    spider_dir: str | None = None
    """The Spider folder with ``tables.json`` and ``database/``; null: ``data.data_dir`` (then
    also holding ``train_spider.json`` and ``dev.json``). Required with the hub's questions."""
    hub_id: str = "xlangai/spider"
    """Hub dataset of the questions (``question``, ``query``, ``db_id``), read when
    ``data.data_dir`` is null."""
    train_file: str = "train_spider.json"
    """The training questions in the Spider folder (the hub's ``train``)."""
    dev_file: str = "dev.json"
    """The dev questions (the test split)."""
    execution: bool = True
    """Also run each query on its database: execution accuracy (the benchmark's headline)."""
    lowercase_sql: bool = False
    """Lower-case the target and the scored gold SQL, as the benchmark does."""
    missing_databases: Literal["error", "drop"] = "error"
    """A question whose database file is missing: an error, or ``drop`` (left out, with a
    warning naming the databases and counting the questions)."""
    timeout_s: float = 30.0
    """Time limit of one query's execution (a prediction over it does not match)."""

    name: ClassVar[str] = "spider"
    max_new_tokens: ClassVar[int] = 256

    @property
    def lm_metrics(self) -> tuple[str, ...]:
        exact = ("exact_set_match", *(f"exact_set_match_{lv}" for lv in LEVELS))
        if not self.execution:
            return exact
        return ("execution_accuracy", *exact, *(f"execution_accuracy_{lv}" for lv in LEVELS))

    def folder(self, data_dir: str | None) -> Path:
        if self.spider_dir is None and data_dir is None:
            raise SsmloraError(
                "spider needs the Spider folder (tables.json, database/) for its schemas and its "
                "scoring: set data.task.spider_dir, or data.data_dir to the folder."
            )
        return Path(self.spider_dir if self.spider_dir is not None else data_dir)

    def check_data_dir(self, data_dir: str | None) -> None:
        folder = self.folder(data_dir)
        missing = [p for p in (folder / "tables.json", folder / "database") if not p.exists()]
        if data_dir is not None and not (Path(data_dir) / self.dev_file).is_file():
            missing.append(Path(data_dir) / self.dev_file)
        if missing:
            raise SsmloraError(
                f"spider: {', '.join(str(p) for p in missing)} missing: give the Spider folder "
                "(spider_data: tables.json, database/<db_id>/<db_id>.sqlite, train_spider.json, "
                "dev.json), or data.data_dir: null with data.task.spider_dir for the hub's "
                f"questions ({self.hub_id})."
            )

    def metric_options(self, data_dir: str | None) -> dict:
        folder = self.folder(data_dir).resolve()
        return {
            "database_dir": str(folder / "database"),
            "tables": str(folder / "tables.json"),
            "execution": self.execution,
            "timeout_s": self.timeout_s,
        }

    def questions(self, split: str, data_dir: str | None) -> list[dict]:
        """The split's ``{question, query, db_id}`` records."""
        self.check_split(self.name, split)
        if data_dir is None:
            ds = datasets.load_dataset(
                self.hub_id, split="validation" if split == "test" else "train"
            )
        else:
            path = Path(data_dir) / (self.dev_file if split == "test" else self.train_file)
            if not path.is_file():
                raise SsmloraError(f"spider: no {path} for split {split!r}.")
            records = read_json_records(path)
            if any(not {"question", "query", "db_id"} <= r.keys() for r in records):
                raise SsmloraError(f"spider: {path} has records without question, query, db_id.")
            ds = datasets.Dataset.from_list(
                [{k: r[k] for k in ("question", "query", "db_id")} for r in records]
            )
        if split != "test":
            ds = tvt_split(ds, split)
        return self._with_databases(list(ds), split, data_dir)

    def _with_databases(self, records: list[dict], split: str, data_dir: str | None) -> list[dict]:
        database = self.folder(data_dir) / "database"
        missing: dict[str, int] = {}
        for r in records:
            if not (database / r["db_id"] / f"{r['db_id']}.sqlite").is_file():
                missing[r["db_id"]] = missing.get(r["db_id"], 0) + 1
        if not missing:
            return records
        counts = ", ".join(f"{db} ({n})" for db, n in sorted(missing.items()))
        if self.missing_databases == "error":
            raise SsmloraError(
                f"spider {split}: no database file under {database} for {counts} question(s); "
                "scoring parses each query against its database: add them, or set "
                "data.task.missing_databases=drop to leave those questions out."
            )
        rank_zero_warn(f"spider {split}: left out the questions of missing databases: {counts}.")
        return [r for r in records if r["db_id"] not in missing]

    def load_lm_split(self, split: str, data_dir: str | None) -> datasets.Dataset:
        tables = self.folder(data_dir) / "tables.json"
        schemas = {s["db_id"]: schema_text(s) for s in json.loads(tables.read_text())}
        rows = []
        for r in self.questions(split, data_dir):
            if r["db_id"] not in schemas:
                raise SsmloraError(f"spider: database {r['db_id']!r} is not in {tables}.")
            sql = r["query"].strip()
            sql = sql.lower() if self.lowercase_sql else sql
            question = f"Question: {r['question']}\\Schema: {schemas[r['db_id']]}\n"
            rows.append(
                {
                    "prompt": f"{PROMPT}{SEPARATOR}{question}{SEPARATOR}",
                    "target": sql,
                    "references": [f"{sql}{SPIDER_REFERENCE_SEPARATOR}{r['db_id']}"],
                }
            )
        return lm_rows(rows)


register_task("spider", SpiderTask)
