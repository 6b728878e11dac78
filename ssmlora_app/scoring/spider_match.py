"""Spider's hardness levels and exact set match, on parsed queries.

Reproduces taoyds/spider@b7b5b8c8 ``evaluation.py`` (``Evaluator.eval_hardness``,
``Evaluator.eval_exact_match`` and the component functions it calls), read there and written anew
here with the same rules; :mod:`.spider` normalises the queries first and runs the evaluation.
The one knowing difference: an unhashable AND/OR list or an unsortable FROM list (two sub-queries)
in a malformed prediction scores 0 where the official script stops (the PEFT-of-SSMs benchmark's
copy catches the first case the same way).
"""

from __future__ import annotations

from collections.abc import Iterable

from ssmlora_app.scoring.spider_sql import AGG_OPS, WHERE_OPS

# ---- hardness (official ``Evaluator.eval_hardness``) ------------------------------------------


def _conds(sql: dict) -> list:
    return sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]


def _conjunctions(sql: dict) -> list:
    return sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]


def nested_queries(sql: dict) -> list[dict]:
    """Sub-queries in conditions, then INTERSECT, EXCEPT, UNION (official ``get_nestedSQL``)."""
    nested = [v for cond in _conds(sql) for v in (cond[3], cond[4]) if isinstance(v, dict)]
    return nested + [sql[op] for op in ("intersect", "except", "union") if sql[op] is not None]


def _count_agg(units: Iterable) -> int:
    # official ``count_agg``: unit[0] != 0. On condition lists this reads a cond's NOT flag and
    # counts the "and"/"or" strings; kept, as the hardness levels depend on it.
    return sum(1 for unit in units if unit[0] != AGG_OPS.index("none"))


def hardness(sql: dict) -> str:
    """easy / medium / hard / extra, from the parsed gold query."""
    comp1 = sum(bool(sql[k]) for k in ("where", "groupBy", "orderBy")) + (sql["limit"] is not None)
    comp1 += max(len(sql["from"]["table_units"]) - 1, 0)
    comp1 += _conjunctions(sql).count("or")
    comp1 += sum(1 for cond in _conds(sql) if cond[1] == WHERE_OPS.index("like"))
    comp2 = len(nested_queries(sql))
    aggs = _count_agg(sql["select"][1]) + _count_agg(sql["where"][::2])
    aggs += _count_agg(sql["groupBy"])
    if sql["orderBy"]:
        order_units = sql["orderBy"][1]
        aggs += _count_agg(
            [u[1] for u in order_units if u[1]] + [u[2] for u in order_units if u[2]]
        )
    aggs += _count_agg(sql["having"])
    others = (aggs > 1) + (len(sql["select"][1]) > 1) + (len(sql["where"]) > 1)
    others += len(sql["groupBy"]) > 1
    if comp1 <= 1 and others == 0 and comp2 == 0:
        return "easy"
    if (others <= 2 and comp1 <= 1 and comp2 == 0) or (comp1 <= 2 and others < 2 and comp2 == 0):
        return "medium"
    if (
        (others > 2 and comp1 <= 2 and comp2 == 0)
        or (2 < comp1 <= 3 and others <= 2 and comp2 == 0)
        or (comp1 <= 1 and others == 0 and comp2 <= 1)
    ):
        return "hard"
    return "extra"


# ---- exact set match (official ``Evaluator.eval_exact_match``) ---------------------------------


def _matched(pred: list, gold: list) -> int:
    gold = list(gold)
    count = 0
    for unit in pred:
        if unit in gold:
            count += 1
            gold.remove(unit)
    return count


def _all_match(count: int, pred_total: int, gold_total: int) -> bool:
    return pred_total == gold_total and count == pred_total


def _keywords(sql: dict) -> set[str]:
    found = {
        k for k, key in (("where", "where"), ("group", "groupBy"), ("having", "having")) if sql[key]
    }
    if sql["orderBy"]:
        found |= {sql["orderBy"][0], "order"}
    found |= {k for k in ("limit", "except", "union", "intersect") if sql[k] is not None}
    if "or" in _conjunctions(sql):
        found.add("or")
    conds = _conds(sql)
    if any(c[0] for c in conds):
        found.add("not")
    for op in ("in", "like"):
        if any(c[1] == WHERE_OPS.index(op) for c in conds):
            found.add(op)
    return found


def _nested_match(pred: dict | None, gold: dict | None) -> tuple[int, int, int]:
    both = pred is not None and gold is not None
    return int(gold is not None), int(pred is not None), int(both and exact_match(pred, gold))


def _components_match(pred: dict, gold: dict) -> bool:
    """Official ``eval_partial_match``, reduced to what exact match needs: does each component
    have F1 1?"""
    pred_sel, gold_sel = pred["select"][1], gold["select"][1]
    if not _all_match(_matched(pred_sel, gold_sel), len(pred_sel), len(gold_sel)):
        return False  # "select" (its no-AGG variant is implied by it)
    pred_where, gold_where = pred["where"][::2], gold["where"][::2]
    if not _all_match(_matched(pred_where, gold_where), len(pred_where), len(gold_where)):
        return False
    pred_group = [u[1] for u in pred["groupBy"]]
    gold_group = [u[1] for u in gold["groupBy"]]
    short = [
        [c.split(".")[1] if "." in c else c for c in cols] for cols in (pred_group, gold_group)
    ]
    if not _all_match(_matched(short[0], short[1]), len(pred_group), len(gold_group)):
        return False  # group(no Having)
    pred_has, gold_has = int(bool(pred["groupBy"])), int(bool(gold["groupBy"]))
    having_ok = (
        pred_has == gold_has == 1 and pred_group == gold_group and pred["having"] == gold["having"]
    )
    if not _all_match(int(having_ok), pred_has, gold_has):
        return False  # group
    pred_order, gold_order = int(bool(pred["orderBy"])), int(bool(gold["orderBy"]))
    order_ok = (
        bool(gold["orderBy"])
        and pred["orderBy"] == gold["orderBy"]
        and (pred["limit"] is None) == (gold["limit"] is None)
    )
    if not _all_match(int(order_ok), pred_order, gold_order):
        return False
    try:
        if set(pred["where"][1::2]) != set(gold["where"][1::2]):
            return False  # and/or
    except TypeError:  # a malformed prediction's condition list (the benchmark's ``try``)
        return False
    totals = [_nested_match(pred[op], gold[op]) for op in ("intersect", "except", "union")]
    gold_n, pred_n, count = (sum(t[i] for t in totals) for i in range(3))
    if not _all_match(count, pred_n, gold_n):
        return False  # IUEN
    pred_kw, gold_kw = _keywords(pred), _keywords(gold)
    return _all_match(len(pred_kw & gold_kw), len(pred_kw), len(gold_kw))


def exact_match(pred: dict, gold: dict) -> bool:
    """Exact set match of two normalised queries (:func:`normalize`)."""
    if not _components_match(pred, gold):
        return False
    if gold["from"]["table_units"]:
        try:
            return sorted(gold["from"]["table_units"]) == sorted(pred["from"]["table_units"])
        except TypeError:  # two sub-queries in FROM cannot be sorted: the official run stops
            return False
    return True
