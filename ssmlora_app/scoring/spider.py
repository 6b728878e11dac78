"""Spider exact set match (with hardness levels) and execution accuracy.

Reproduces taoyds/spider@b7b5b8c8 ``evaluation.py`` (read there; written anew here, same rules),
which the PEFT-of-SSMs benchmark (furiosa-ai/ssm-peft@6a0a7247 ``metrics/spider``) runs
unchanged but for one ``try``. Per question, with the gold query's database:

- both queries are parsed against the database's schema (:mod:`.spider_sql`); a prediction that
  does not parse is scored as an empty query;
- hardness (easy / medium / hard / extra) comes from the gold query's components;
- values are dropped (value-agnostic), DISTINCT is ignored, and columns linked by foreign keys
  (``tables.json``) count as one column;
- exact set match: every component (SELECT, WHERE, GROUP BY, HAVING, ORDER BY with LIMIT, AND/OR,
  nested / INTERSECT / UNION / EXCEPT queries, keywords) matches as a set, and so do the FROM
  tables;
- execution: both queries run on the database; they match when, for each SELECT column (keyed by
  its first column unit), the result column lists are equal — the official comparison, row order
  included.

Knowing differences: databases open read-only, each query gets a time limit (a prediction that
runs out of time does not match; the official script has no limit); an unhashable AND/OR list in a
malformed prediction scores 0 instead of stopping the run (the benchmark's ``try``); a gold query
that does not parse or run raises :class:`ScoringError` (the official script stops there too); a
question whose database file is missing is skipped and counted in ``skipped``.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ssmlora_app.scoring.errors import ScoringError
from ssmlora_app.scoring.spider_match import exact_match, hardness
from ssmlora_app.scoring.spider_sql import Schema, SqlParseError, empty_sql, parse_sql

LEVELS = ("easy", "medium", "hard", "extra")


# ---- value and foreign-key normalisation (official ``rebuild_sql_val`` / ``rebuild_sql_col``) --


def _drop_values(sql: dict | None) -> dict | None:
    """Values -> None, except sub-queries (also stripped) — in place, as official."""
    if sql is None:
        return None

    def condition(conds: list) -> list:
        return [
            c
            if i % 2
            else (
                c[0],
                c[1],
                c[2],
                _drop_values(c[3]) if isinstance(c[3], dict) else None,
                _drop_values(c[4]) if isinstance(c[4], dict) else None,
            )
            for i, c in enumerate(conds)
        ]

    sql["from"]["conds"] = condition(sql["from"]["conds"])
    sql["having"] = condition(sql["having"])
    sql["where"] = condition(sql["where"])
    for op in ("intersect", "except", "union"):
        sql[op] = _drop_values(sql[op])
    return sql


def foreign_key_maps(tables_json: str | Path) -> dict[str, dict[str, str]]:
    """``tables.json`` -> {db_id: {column id: the column id its foreign-key group counts as}}
    (official ``build_foreign_key_map``: a key pair joins the first group holding either key;
    each group maps to its lowest column index)."""
    maps = {}
    for entry in json.loads(Path(tables_json).read_text()):
        tables = entry["table_names_original"]
        cols = [
            f"__{tables[t].lower()}.{c.lower()}__" if t >= 0 else "__all__"
            for t, c in entry["column_names_original"]
        ]
        groups: list[set[int]] = []
        for k1, k2 in entry["foreign_keys"]:
            group = next((g for g in groups if k1 in g or k2 in g), None)
            if group is None:
                group = set()
                groups.append(group)
            group |= {k1, k2}
        maps[entry["db_id"]] = {cols[i]: cols[min(g)] for g in groups for i in sorted(g)}
    return maps


def _map_columns(sql: dict | None, valid: set[str], kmap: Mapping[str, str]) -> dict | None:
    """Foreign-key columns -> their group's column, DISTINCT -> None (in place, as official;
    like the official code it leaves sub-queries inside conditions untouched)."""
    if sql is None:
        return None

    def col_unit(unit):
        if unit is None:
            return None
        agg, col, _ = unit
        return agg, kmap[col] if col in kmap and col in valid else col, None

    def val_unit(unit):
        return None if unit is None else (unit[0], col_unit(unit[1]), col_unit(unit[2]))

    def condition(conds: list) -> list:
        return [
            c if i % 2 else (c[0], c[1], val_unit(c[2]), c[3], c[4]) for i, c in enumerate(conds)
        ]

    sql["select"] = (None, [(agg, val_unit(u)) for agg, u in sql["select"][1]])
    sql["from"]["conds"] = condition(sql["from"]["conds"])
    sql["where"] = condition(sql["where"])
    sql["groupBy"] = [col_unit(u) for u in sql["groupBy"]]
    if sql["orderBy"]:
        sql["orderBy"] = (sql["orderBy"][0], [val_unit(u) for u in sql["orderBy"][1]])
    sql["having"] = condition(sql["having"])
    for op in ("intersect", "except", "union"):
        sql[op] = _map_columns(sql[op], valid, kmap)
    return sql


def normalize(sql: dict, schema: Schema, kmap: Mapping[str, str]) -> dict:
    """A parsed query as the official evaluator compares it (values dropped, DISTINCT ignored,
    foreign-key columns merged) — on a copy."""
    sql = copy.deepcopy(sql)
    tables = {unit[1][:-2] for unit in sql["from"]["table_units"] if unit[0] == "table_unit"}
    valid = {v for v in schema.ids.values() if "." in v and v[: v.index(".")] in tables}
    return _map_columns(_drop_values(sql), valid, kmap)


# ---- execution (official ``eval_exec_match``) ------------------------------------------------


def _run(connection: sqlite3.Connection, query: str, timeout_s: float) -> list[tuple]:
    deadline = time.monotonic() + timeout_s
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.set_progress_handler(None, 0)


def _columns(rows: list[tuple], select: list) -> dict:
    out = {}
    for i, (_, unit) in enumerate(select):
        key = tuple(unit[1]) if not unit[2] else (unit[0], tuple(unit[1]), tuple(unit[2]))
        out[key] = [row[i] for row in rows]
    return out


def execution_match(
    connection: sqlite3.Connection,
    pred_query: str,
    gold_query: str,
    pred: dict,
    gold: dict,
    timeout_s: float = 30.0,
) -> bool:
    """Run both queries; equal result columns per SELECT column key (normalised parses)."""
    try:
        pred_rows = _run(connection, pred_query, timeout_s)
    except Exception:
        return False
    try:
        gold_rows = _run(connection, gold_query, timeout_s)
    except sqlite3.Error as err:
        raise ScoringError(f"Spider gold query failed ({err}): {gold_query}") from err
    try:
        return _columns(pred_rows, pred["select"][1]) == _columns(gold_rows, gold["select"][1])
    except IndexError:  # more SELECT units than result columns: the official script stops here
        return False


# ---- the whole evaluation ------------------------------------------------------------------


@dataclass(frozen=True)
class SpiderResult:
    """One question's outcome."""

    hardness: str
    exact: bool
    execution: bool | None
    """None when execution was not asked for."""
    parse_error: bool
    """The prediction did not parse (scored as an empty query)."""


def evaluate(
    pairs: Iterable[tuple[str, str, str]],
    database_dir: str | Path,
    tables_json: str | Path,
    execution: bool = True,
    timeout_s: float = 30.0,
) -> dict:
    """Score ``(predicted SQL, gold SQL, db_id)`` triples.

    Returns ``count``, ``exact`` and (with ``execution``) ``exec``, each a dict over
    ``easy/medium/hard/extra/all`` (accuracies in [0, 1], as the official table prints them),
    ``parse_errors``, ``skipped`` ({db_id: questions skipped because ``<database_dir>/<db_id>/
    <db_id>.sqlite`` is missing}) and ``results`` (a :class:`SpiderResult` per scored question)."""
    kmaps = foreign_key_maps(tables_json)
    connections: dict[str, tuple[sqlite3.Connection, Schema] | None] = {}
    results: list[SpiderResult] = []
    skipped: Counter = Counter()
    try:
        for pred_query, gold_query, db_id in pairs:
            if db_id not in connections:
                path = Path(database_dir) / db_id / f"{db_id}.sqlite"
                if path.is_file():
                    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                    connections[db_id] = (conn, Schema.from_sqlite(conn))
                else:
                    connections[db_id] = None
            if connections[db_id] is None:
                skipped[db_id] += 1
                continue
            conn, schema = connections[db_id]
            results.append(
                _score_one(pred_query, gold_query, db_id, conn, schema, kmaps, execution, timeout_s)
            )
    finally:
        for entry in connections.values():
            if entry is not None:
                entry[0].close()
    return _summary(results, execution) | {"skipped": dict(skipped), "results": results}


def _score_one(pred_query, gold_query, db_id, conn, schema, kmaps, execution, timeout_s):
    if db_id not in kmaps:
        raise ScoringError(f"Spider: database {db_id!r} is not in tables.json")
    try:
        gold = parse_sql(gold_query, schema)
    except SqlParseError as err:
        raise ScoringError(f"Spider gold query does not parse ({err}): {gold_query}") from err
    level = hardness(gold)
    try:
        pred, parse_error = parse_sql(pred_query, schema), False
    except SqlParseError:
        pred, parse_error = empty_sql(), True
    kmap = kmaps[db_id]
    gold, pred = normalize(gold, schema, kmap), normalize(pred, schema, kmap)
    executed = (
        execution_match(conn, pred_query, gold_query, pred, gold, timeout_s) if execution else None
    )
    return SpiderResult(level, exact_match(pred, gold), executed, parse_error)


def _summary(results: list[SpiderResult], execution: bool) -> dict:
    count, exact, executed = Counter(), Counter(), Counter()
    for r in results:
        for level in (r.hardness, "all"):
            count[level] += 1
            exact[level] += r.exact
            executed[level] += bool(r.execution)

    def rate(hits: Counter) -> dict:
        return {lv: hits[lv] / count[lv] if count[lv] else 0.0 for lv in (*LEVELS, "all")}

    out = {
        "count": {lv: count[lv] for lv in (*LEVELS, "all")},
        "exact": rate(exact),
        "parse_errors": sum(r.parse_error for r in results),
    }
    if execution:
        out["exec"] = rate(executed)
    return out
