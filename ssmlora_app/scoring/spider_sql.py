"""Spider's SQL parser: a query -> the nested structure the official evaluator compares.

Reproduces taoyds/spider@b7b5b8c8 ``process_sql.py`` (read there; written anew here, same rules,
same failures). The parse is schema-aware: every column becomes an id ``"__table.column__"``
(``"__all__"`` for ``*``), every table ``"__table__"``, aliases are resolved, string values keep
their quotes and numbers become floats. The structure, as the official file documents it::

    col_unit   = (agg_id, col_id, is_distinct)
    val_unit   = (unit_op, col_unit1, col_unit2)
    table_unit = ("table_unit", table_id) | ("sql", sql)
    cond_unit  = (not_op, op_id, val_unit, val1, val2)
    condition  = [cond_unit1, "and"/"or", cond_unit2, ...]
    sql = {"select": (is_distinct, [(agg_id, val_unit), ...]),
           "from": {"table_units": [...], "conds": condition}, "where": condition,
           "groupBy": [col_unit, ...], "orderBy": ("asc"/"desc", [val_unit, ...]) or [],
           "having": condition, "limit": int | None,
           "intersect": sql | None, "except": sql | None, "union": sql | None}

Tokenisation: quotes become ``"``; each quoted value is one token; the rest is split by NLTK's
word tokenizer and lower-cased; ``! > <`` before ``=`` join it. Knowing difference: the official
script calls ``nltk.word_tokenize``, which first splits sentences with NLTK's punkt model (a data
download); here each query is one sentence (``preserve_line=True``, no data needed). The two can
only differ where a query has ``.``, ``?`` or ``!`` followed by a space or a bracket outside quoted
values; no query of Spider's dev gold or of the official example predictions has one (tested).

Anything the official parser rejects (an assertion, an unknown column, a stray token) raises
:class:`SqlParseError`, whatever the Python error underneath was, as the official evaluator treats
any exception of a prediction's parse as "unparseable".
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from nltk.tokenize import word_tokenize

CLAUSE_KEYWORDS = (
    "select",
    "from",
    "where",
    "group",
    "order",
    "limit",
    "intersect",
    "union",
    "except",
)
JOIN_KEYWORDS = ("join", "on", "as")
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
COND_OPS = ("and", "or")
SQL_OPS = ("intersect", "union", "except")
ORDER_OPS = ("desc", "asc")


class SqlParseError(ValueError):
    """The official parser cannot parse this query against this schema."""


class Schema:
    """Tables and columns of one database, lower-cased, with the ids the parse uses."""

    def __init__(self, tables: Mapping[str, list[str]]) -> None:
        self.tables = {t.lower(): [c.lower() for c in cols] for t, cols in tables.items()}
        self.ids = {"*": "__all__"}
        for table, cols in self.tables.items():
            for col in cols:
                self.ids[f"{table}.{col}"] = f"__{table}.{col}__"
        for table in self.tables:
            self.ids[table] = f"__{table}__"

    @classmethod
    def from_sqlite(cls, connection: sqlite3.Connection) -> Schema:
        """The schema as the official ``get_schema`` reads it: ``sqlite_master`` tables and their
        ``PRAGMA table_info`` columns."""
        cursor = connection.cursor()
        names = [
            r[0].lower()
            for r in cursor.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        tables = {}
        for name in names:
            tables[name] = [r[1].lower() for r in cursor.execute(f"PRAGMA table_info({name})")]
        return cls(tables)


def tokenize(query: str) -> list[str]:
    """The official ``tokenize`` (see the module docstring for the one-sentence difference)."""
    text = str(query).replace("'", '"')
    quotes = [i for i, ch in enumerate(text) if ch == '"']
    if len(quotes) % 2:
        raise SqlParseError("Unexpected quote")
    values = {}
    for i in range(len(quotes) - 1, -1, -2):  # right to left, so earlier indices stay valid
        start, end = quotes[i - 1], quotes[i]
        key = f"__val_{start}_{end}__"
        values[key] = text[start : end + 1]
        text = text[:start] + key + text[end + 1 :]
    tokens = [
        values.get(t, t) for t in (w.lower() for w in word_tokenize(text, preserve_line=True))
    ]
    for i in reversed([i for i, t in enumerate(tokens) if t == "="]):
        before = tokens[i - 1]
        if before in ("!", ">", "<"):
            tokens = [*tokens[: i - 1], before + "=", *tokens[i + 1 :]]
    return tokens


def _aliases(tokens: list[str], schema: Schema) -> dict[str, str]:
    """``get_tables_with_alias``: alias -> table (every table is also its own alias)."""
    aliases = {}
    for i, tok in enumerate(tokens):
        if tok == "as":
            aliases[tokens[i + 1]] = tokens[i - 1]
    for table in schema.tables:
        if table in aliases:
            raise SqlParseError(f"Alias {table} has the same name in table")
        aliases[table] = table
    return aliases


def parse_sql(query: str, schema: Schema) -> dict:
    """``get_sql``: a query -> its parsed structure; :class:`SqlParseError` when the official
    parser would fail."""
    try:
        tokens = tokenize(query)
        return _Parser(tokens, _aliases(tokens, schema), schema).sql(0)[1]
    except SqlParseError:
        raise
    except Exception as err:  # the official parser fails by assert, KeyError, IndexError, ...
        raise SqlParseError(f"{type(err).__name__}: {err}") from err


class _Parser:
    """One query's tokens; each method returns (next index, parsed piece) like the official
    ``parse_*`` functions, with the same index arithmetic and the same failures."""

    def __init__(self, toks: list[str], aliases: dict[str, str], schema: Schema) -> None:
        self.toks, self.aliases, self.schema = toks, aliases, schema

    def col(self, toks: list[str], i: int, default_tables: list[str] | None) -> tuple[int, str]:
        tok = toks[i]
        if tok == "*":
            return i + 1, self.schema.ids[tok]
        if "." in tok:
            alias, column = tok.split(".")
            return i + 1, self.schema.ids[f"{self.aliases[alias]}.{column}"]
        if not default_tables:
            raise SqlParseError("Default tables should not be None or empty")
        for alias in default_tables:
            table = self.aliases[alias]
            if tok in self.schema.tables[table]:
                return i + 1, self.schema.ids[f"{table}.{tok}"]
        raise SqlParseError(f"Error col: {tok}")

    def col_unit(self, toks: list[str], i: int, default_tables) -> tuple[int, tuple]:
        block = distinct = False
        if toks[i] == "(":
            block, i = True, i + 1
        if toks[i] in AGG_OPS:
            agg = AGG_OPS.index(toks[i])
            i += 1
            _expect(i < len(toks) and toks[i] == "(")
            i += 1
            if toks[i] == "distinct":
                distinct, i = True, i + 1
            i, col = self.col(toks, i, default_tables)
            _expect(i < len(toks) and toks[i] == ")")
            return i + 1, (agg, col, distinct)
        if toks[i] == "distinct":
            distinct, i = True, i + 1
        i, col = self.col(toks, i, default_tables)
        if block:
            _expect(toks[i] == ")")
            i += 1
        return i, (AGG_OPS.index("none"), col, distinct)

    def val_unit(self, i: int, default_tables) -> tuple[int, tuple]:
        toks = self.toks
        block = False
        if toks[i] == "(":
            block, i = True, i + 1
        op, unit2 = UNIT_OPS.index("none"), None
        i, unit1 = self.col_unit(toks, i, default_tables)
        if i < len(toks) and toks[i] in UNIT_OPS:
            op = UNIT_OPS.index(toks[i])
            i, unit2 = self.col_unit(toks, i + 1, default_tables)
        if block:
            _expect(toks[i] == ")")
            i += 1
        return i, (op, unit1, unit2)

    def table_unit(self, i: int) -> tuple[int, str, str]:
        toks = self.toks
        table = self.aliases[toks[i]]
        i += 3 if i + 1 < len(toks) and toks[i + 1] == "as" else 1
        return i, self.schema.ids[table], table

    def value(self, i: int, default_tables) -> tuple[int, object]:
        toks, start = self.toks, i
        block = False
        if toks[i] == "(":
            block, i = True, i + 1
        if toks[i] == "select":
            i, val = self.sql(i)
        elif '"' in toks[i]:  # a string value
            val, i = toks[i], i + 1
        else:
            try:
                val, i = float(toks[i]), i + 1
            except ValueError:
                end = i
                while (
                    end < len(toks)
                    and toks[end] not in (",", ")", "and")
                    and toks[end] not in CLAUSE_KEYWORDS
                    and toks[end] not in JOIN_KEYWORDS
                ):
                    end += 1
                # the official parser reads the column from the value's first token, "(" included
                _, val = self.col_unit(toks[start:end], 0, default_tables)
                i = end
        if block:
            _expect(toks[i] == ")")
            i += 1
        return i, val

    def condition(self, i: int, default_tables) -> tuple[int, list]:
        toks = self.toks
        conds: list = []
        while i < len(toks):
            i, val_unit = self.val_unit(i, default_tables)
            negated = False
            if toks[i] == "not":
                negated, i = True, i + 1
            _expect(i < len(toks) and toks[i] in WHERE_OPS)
            op = WHERE_OPS.index(toks[i])
            i += 1
            val2 = None
            if op == WHERE_OPS.index("between"):
                i, val1 = self.value(i, default_tables)
                _expect(toks[i] == "and")
                i, val2 = self.value(i + 1, default_tables)
            else:
                i, val1 = self.value(i, default_tables)
            conds.append((negated, op, val_unit, val1, val2))
            if i < len(toks) and (
                toks[i] in CLAUSE_KEYWORDS or toks[i] in (")", ";") or toks[i] in JOIN_KEYWORDS
            ):
                break
            if i < len(toks) and toks[i] in COND_OPS:
                conds.append(toks[i])
                i += 1
        return i, conds

    def select(self, i: int, default_tables) -> tuple[int, tuple]:
        toks = self.toks
        _expect(toks[i] == "select")
        i += 1
        distinct = False
        if i < len(toks) and toks[i] == "distinct":
            distinct, i = True, i + 1
        units = []
        while i < len(toks) and toks[i] not in CLAUSE_KEYWORDS:
            agg = AGG_OPS.index("none")
            if toks[i] in AGG_OPS:
                agg, i = AGG_OPS.index(toks[i]), i + 1
            i, val_unit = self.val_unit(i, default_tables)
            units.append((agg, val_unit))
            if i < len(toks) and toks[i] == ",":
                i += 1
        return i, (distinct, units)

    def from_(self, start: int) -> tuple[int, list, list, list[str]]:
        toks = self.toks
        _expect("from" in toks[start:])
        i = toks.index("from", start) + 1
        default_tables: list[str] = []
        table_units: list = []
        conds: list = []
        while i < len(toks):
            block = False
            if toks[i] == "(":
                block, i = True, i + 1
            if toks[i] == "select":
                i, sub = self.sql(i)
                table_units.append(("sql", sub))
            else:
                if i < len(toks) and toks[i] == "join":
                    i += 1
                i, table_id, table = self.table_unit(i)
                table_units.append(("table_unit", table_id))
                default_tables.append(table)
            if i < len(toks) and toks[i] == "on":
                i, these = self.condition(i + 1, default_tables)
                if conds:
                    conds.append("and")
                conds.extend(these)
            if block:
                _expect(toks[i] == ")")
                i += 1
            if i < len(toks) and (toks[i] in CLAUSE_KEYWORDS or toks[i] in (")", ";")):
                break
        return i, table_units, conds, default_tables

    def _clause_condition(self, i: int, keyword: str, default_tables) -> tuple[int, list]:
        if i >= len(self.toks) or self.toks[i] != keyword:
            return i, []
        return self.condition(i + 1, default_tables)

    def group_by(self, i: int, default_tables) -> tuple[int, list]:
        toks = self.toks
        units: list = []
        if i >= len(toks) or toks[i] != "group":
            return i, units
        i += 1
        _expect(toks[i] == "by")
        i += 1
        while i < len(toks) and not (toks[i] in CLAUSE_KEYWORDS or toks[i] in (")", ";")):
            i, unit = self.col_unit(toks, i, default_tables)
            units.append(unit)
            if i < len(toks) and toks[i] == ",":
                i += 1
            else:
                break
        return i, units

    def order_by(self, i: int, default_tables) -> tuple[int, tuple | list]:
        toks = self.toks
        units: list = []
        direction = "asc"
        if i >= len(toks) or toks[i] != "order":
            return i, units
        i += 1
        _expect(toks[i] == "by")
        i += 1
        while i < len(toks) and not (toks[i] in CLAUSE_KEYWORDS or toks[i] in (")", ";")):
            i, unit = self.val_unit(i, default_tables)
            units.append(unit)
            if i < len(toks) and toks[i] in ORDER_OPS:
                direction, i = toks[i], i + 1
            if i < len(toks) and toks[i] == ",":
                i += 1
            else:
                break
        return i, (direction, units)

    def limit(self, i: int) -> tuple[int, int | None]:
        if i < len(self.toks) and self.toks[i] == "limit":
            return i + 2, int(self.toks[i + 1])
        return i, None

    def skip_semicolons(self, i: int) -> int:
        while i < len(self.toks) and self.toks[i] == ";":
            i += 1
        return i

    def sql(self, start: int) -> tuple[int, dict]:
        toks, i = self.toks, start
        block = False
        if toks[i] == "(":
            block, i = True, i + 1
        # FROM first, for the default tables of unqualified columns (from `start`, as official)
        from_end, table_units, conds, default_tables = self.from_(start)
        _, select = self.select(i, default_tables)
        sql: dict = {"from": {"table_units": table_units, "conds": conds}, "select": select}
        i, sql["where"] = self._clause_condition(from_end, "where", default_tables)
        i, sql["groupBy"] = self.group_by(i, default_tables)
        i, sql["having"] = self._clause_condition(i, "having", default_tables)
        i, sql["orderBy"] = self.order_by(i, default_tables)
        i, sql["limit"] = self.limit(i)
        i = self.skip_semicolons(i)
        if block:
            _expect(toks[i] == ")")
            i += 1
        i = self.skip_semicolons(i)
        for op in SQL_OPS:
            sql[op] = None
        if i < len(toks) and toks[i] in SQL_OPS:
            op = toks[i]
            i, sql[op] = self.sql(i + 1)
        return i, sql


def _expect(condition: bool) -> None:
    if not condition:
        raise SqlParseError("unexpected token")


def empty_sql() -> dict:
    """What the official evaluator scores an unparseable prediction as."""
    return {
        "except": None,
        "from": {"conds": [], "table_units": []},
        "groupBy": [],
        "having": [],
        "intersect": None,
        "limit": None,
        "orderBy": [],
        "select": [False, []],
        "union": None,
        "where": [],
    }
