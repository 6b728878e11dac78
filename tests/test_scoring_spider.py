"""Spider exact set match and execution accuracy against the official evaluator's numbers.

Reference numbers: taoyds/spider@b7b5b8c8 ``evaluation.py`` and ``process_sql.py`` run unchanged
on the shared files, without the wta_1 questions (its database is absent; the official script
cannot run without it), with ``nltk.word_tokenize`` given ``preserve_line=True`` (NLTK's punkt
data cannot be downloaded here; :func:`test_no_query_gives_punkt_a_sentence_break` shows it would
not split any of these queries)::

    python evaluation.py --gold gold19.txt --pred pred19.txt --etype all --db database \\
        --table tables.json

where gold19/pred19 are ``evaluation_examples/{gold,pred}_example.txt`` without wta_1's lines. It
prints (count 234/410/160/168/972; execution 0.321 0.473 0.525 0.298 0.415; exact match 0.850
0.710 0.694 0.381 0.684); the counts below are those fractions' numerators, from the same
functions called per question. ``dev_gold.sql`` against itself: 972 questions, every one right.
"""

import hashlib
import json
import re
import sqlite3

import pytest

from ssmlora_app.scoring import ScoringError
from ssmlora_app.scoring.spider import evaluate
from ssmlora_app.scoring.spider_match import hardness
from ssmlora_app.scoring.spider_sql import Schema, SqlParseError, parse_sql, tokenize

LEVELS = ("easy", "medium", "hard", "extra")
OFFICIAL_COUNT = {"easy": 234, "medium": 410, "hard": 160, "extra": 168, "all": 972}
OFFICIAL_EXACT = {"easy": 199, "medium": 291, "hard": 111, "extra": 64}
OFFICIAL_EXEC = {"easy": 75, "medium": 194, "hard": 84, "extra": 50}
OFFICIAL_TABLE = {  # the printed table, three decimals
    "exact": {"easy": 0.850, "medium": 0.710, "hard": 0.694, "extra": 0.381, "all": 0.684},
    "exec": {"easy": 0.321, "medium": 0.473, "hard": 0.525, "extra": 0.298, "all": 0.415},
}


@pytest.fixture(scope="module")
def spider(shared_data):
    path = shared_data / "spider"
    if not (path / "tables.json").is_file():
        pytest.skip(f"{path} is absent")
    return path


def _lines(path):
    return [line.strip().split("\t") for line in path.read_text().splitlines() if line.strip()]


def _pairs(gold_file, pred_file):
    return [(p[0], g[0], g[1]) for p, g in zip(_lines(pred_file), _lines(gold_file), strict=True)]


def test_official_example_pair(spider):
    examples = spider / "evaluation_examples"
    pairs = _pairs(examples / "gold_example.txt", examples / "pred_example.txt")
    out = evaluate(pairs, spider / "database", spider / "tables.json")
    assert out["skipped"] == {"wta_1": 62}  # counted, not scored
    assert out["count"] == OFFICIAL_COUNT
    for level in LEVELS:
        assert out["exact"][level] == OFFICIAL_EXACT[level] / OFFICIAL_COUNT[level]
        assert out["exec"][level] == OFFICIAL_EXEC[level] / OFFICIAL_COUNT[level]
    assert out["exact"]["all"] == 665 / 972 and out["exec"]["all"] == 403 / 972
    for kind, row in OFFICIAL_TABLE.items():
        assert {k: round(v, 3) for k, v in out[kind].items()} == row
    assert out["parse_errors"] == 7  # the official run prints eval_err_num up to 7


def test_dev_gold_against_itself_is_perfect(spider):
    pairs = _pairs(spider / "dev_gold.sql", spider / "dev_gold.sql")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in spider.rglob("*.sqlite")}
    out = evaluate(pairs, spider / "database", spider / "tables.json")
    assert out["skipped"] == {"wta_1": 62}
    assert out["count"]["all"] == 972 and out["parse_errors"] == 0
    assert out["exact"]["all"] == 1.0 and out["exec"]["all"] == 1.0
    assert all(out["exact"][lv] == 1.0 and out["exec"][lv] == 1.0 for lv in LEVELS)
    # the databases are opened read-only and stay byte-identical
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before


def test_no_query_gives_punkt_a_sentence_break(spider):
    """NLTK's punkt can only end a sentence at '.', '?' or '!' followed by a space or one of
    ``?!)";}]*:@'({[``. Outside quoted values no query of the real files has one, so tokenising
    each query as one sentence (no punkt data) gives the official tokens."""
    after = re.compile(r"[.?!](?=[?!)\";}\]*:@'({\[]|\s)")
    queries = [g[0] for g in _lines(spider / "dev_gold.sql")]
    queries += [g[0] for g in _lines(spider / "evaluation_examples" / "gold_example.txt")]
    queries += [p[0] for p in _lines(spider / "evaluation_examples" / "pred_example.txt")]
    queries += [e["query"] for e in json.loads((spider / "dev.json").read_text())]
    assert len(queries) == 4136
    outside_values = [re.sub(r'"[^"]*"', "V", q.replace("'", '"')) for q in queries]
    assert [q for q in outside_values if after.search(q)] == []


# ---- a hand-made database: each rule on its own -------------------------------------------


@pytest.fixture
def shop(tmp_path):
    """A two-table database with a foreign key, in the layout the evaluator reads."""
    db_dir = tmp_path / "database" / "shop"
    db_dir.mkdir(parents=True)
    conn = sqlite3.connect(db_dir / "shop.sqlite")
    conn.executescript(
        """
        CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT, age INTEGER);
        CREATE TABLE orders (oid INTEGER PRIMARY KEY, customer_id INTEGER
                             REFERENCES customer(id), total REAL);
        INSERT INTO customer VALUES (1, 'Ann', 31), (2, 'Bob', 45), (3, 'Cy', 22);
        INSERT INTO orders VALUES (10, 1, 9.5), (11, 1, 20.0), (12, 2, 5.0);
        """
    )
    conn.commit()
    conn.close()
    tables = [
        {
            "db_id": "shop",
            "table_names_original": ["customer", "orders"],
            "column_names_original": [
                [-1, "*"],
                [0, "id"],
                [0, "name"],
                [0, "age"],
                [1, "oid"],
                [1, "customer_id"],
                [1, "total"],
            ],
            "foreign_keys": [[5, 1]],
        }
    ]
    (tmp_path / "tables.json").write_text(json.dumps(tables))
    return tmp_path


def _score(shop, pred, gold, **kw):
    out = evaluate([(pred, gold, "shop")], shop / "database", shop / "tables.json", **kw)
    return out["results"][0]


def test_value_agnostic_exact_but_not_execution(shop):
    r = _score(
        shop, "SELECT name FROM customer WHERE age > 40", "SELECT name FROM customer WHERE age > 30"
    )
    assert r.exact and not r.execution  # values ignored by exact match; Bob vs Ann+Bob


def test_sets_not_order_and_distinct_ignored(shop):
    r = _score(shop, "select age, name from customer", "SELECT DISTINCT name, age FROM customer")
    assert r.exact and r.execution  # SELECT is a set; DISTINCT ignored; columns keyed by id
    r = _score(
        shop,
        "SELECT name FROM customer ORDER BY age DESC",
        "SELECT name FROM customer ORDER BY age",
    )
    assert not r.exact and not r.execution  # direction matters, and rows are compared in order


def test_foreign_key_columns_count_as_one(shop):
    gold = "SELECT T1.name FROM customer AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id GROUP BY T1.id"
    pred = "SELECT T1.name FROM customer AS T1 JOIN orders AS T2 ON T1.id = T2.customer_id GROUP BY T2.customer_id"
    r = _score(shop, pred, gold)
    assert r.exact and r.execution


def test_unparseable_prediction_is_an_empty_query(shop):
    r = _score(shop, "SELECT nonsense FROM nowhere", "SELECT name FROM customer")
    assert r.parse_error and not r.exact and not r.execution
    with pytest.raises(ScoringError, match="gold query does not parse"):
        _score(shop, "SELECT name FROM customer", "SELECT nonsense FROM customer")


def test_slow_prediction_times_out(shop):
    endless = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    )
    r = _score(shop, endless, "SELECT count(*) FROM customer", timeout_s=0.2)
    assert r.execution is False


def test_missing_database_is_skipped_and_counted(shop):
    out = evaluate(
        [("SELECT 1", "SELECT 1", "absent_db"), ("SELECT name FROM customer",) * 2 + ("shop",)],
        shop / "database",
        shop / "tables.json",
    )
    assert out["skipped"] == {"absent_db": 1} and out["count"]["all"] == 1
    assert out["exact"]["all"] == 1.0


def test_hardness_levels_by_hand(shop):
    conn = sqlite3.connect(shop / "database" / "shop" / "shop.sqlite")
    schema = Schema.from_sqlite(conn)
    conn.close()
    cases = {
        "SELECT name FROM customer": "easy",  # nothing
        "SELECT name FROM customer WHERE age > 30": "easy",  # one component
        "SELECT name, age FROM customer WHERE age > 30": "medium",  # + two SELECT columns
        # where + join + order + limit = 4 components, 2 SELECT columns: extra
        "SELECT T1.name, T2.total FROM customer AS T1 JOIN orders AS T2 ON T1.id = "
        "T2.customer_id WHERE T1.age > 30 ORDER BY T2.total LIMIT 1": "extra",
        # one nested query and nothing else: hard
        "SELECT name FROM customer WHERE id IN (SELECT customer_id FROM orders)": "hard",
        # three components (where, group, order) with few others: hard
        "SELECT name FROM customer WHERE age > 1 GROUP BY name ORDER BY name": "hard",
    }
    for query, level in cases.items():
        assert hardness(parse_sql(query, schema)) == level, query


def test_tokenizer_rules():
    assert tokenize("SELECT a FROM t WHERE b >= 3 AND c != 'x y'") == [
        "select", "a", "from", "t", "where", "b", ">=", "3", "and", "c", "!=", '"x y"',
    ]  # fmt: skip
    with pytest.raises(SqlParseError, match="Unexpected quote"):
        tokenize("SELECT a FROM t WHERE b = 'x")
