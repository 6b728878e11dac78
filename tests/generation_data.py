"""Tiny hand-written files for the generation benchmarks' tasks, in their official layouts: DART
JSON, SAMSum (``tests/data/samsum``, the corpus/hub layout), a Spider folder with a real SQLite
database and its ``tables.json`` entry, and L-Eval exam files in the Coursera and TPO layouts."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

SAMSUM = Path(__file__).parent / "data" / "samsum"


def write_dart(folder: Path, entries: int = 8) -> Path:
    """``dart-v1.1.1-full-{train,dev,test}.json`` with ``entries`` entries each (two references
    for even entries)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in ("train", "dev", "test"):
        items = []
        for i in range(entries):
            texts = [f"Town {i} has {i} parks."] + ([f"There are {i} parks in Town {i}."] if i % 2 == 0 else [])  # fmt: skip
            items.append({"tripleset": [[f"Town {i}", "PARKS", str(i)]], "subtree_was_extended": False,
                          "annotations": [{"source": "WikiSQL", "text": t} for t in texts]})  # fmt: skip
        (folder / f"dart-v1.1.1-full-{stem}.json").write_text(json.dumps(items))
    return folder


def write_samsum(folder: Path) -> Path:
    shutil.copytree(SAMSUM, folder, dirs_exist_ok=True)
    return folder


SPIDER_QUESTIONS = [
    ("How many pets are there?", "SELECT count(*) FROM pet"),
    ("What are the names of all pets?", "SELECT name FROM pet"),
    ("What is the age of the oldest pet?", "SELECT max(age) FROM pet"),
    ("List the names of pets older than 3.", "SELECT name FROM pet WHERE age  >  3"),
    (
        "How many pets does each owner have?",
        "SELECT owner_id ,  count(*) FROM pet GROUP BY owner_id",
    ),
    ("What is the name of the youngest pet?", "SELECT name FROM pet ORDER BY age LIMIT 1"),
    ("What are the names of the owners?", "SELECT name FROM owner"),
    ("How many owners are there?", "SELECT count(*) FROM owner"),
    (
        "Which owner has the pet named Rex?",
        "SELECT T1.name FROM owner AS T1 JOIN pet AS T2 ON T1.owner_id  =  T2.owner_id WHERE T2.name  =  'Rex'",
    ),
    ("What is the average age of pets?", "SELECT avg(age) FROM pet"),
]


def write_spider(folder: Path) -> Path:
    """A Spider folder: ``database/pet_shop/pet_shop.sqlite`` (owners and pets), its
    ``tables.json`` entry, ``train_spider.json`` (ten questions) and ``dev.json`` (four)."""
    db = folder / "database" / "pet_shop"
    db.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db / "pet_shop.sqlite") as conn:
        conn.executescript(
            "CREATE TABLE owner (owner_id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE pet (pet_id INTEGER PRIMARY KEY, owner_id INTEGER, name TEXT, age INTEGER,"
            " FOREIGN KEY (owner_id) REFERENCES owner(owner_id));"
            "INSERT INTO owner VALUES (1, 'Ann'), (2, 'Bo');"
            "INSERT INTO pet VALUES (1, 1, 'Rex', 5), (2, 1, 'Tom', 2), (3, 2, 'Kit', 4);"
        )
    conn.close()
    tables = [{
        "db_id": "pet_shop",
        "table_names_original": ["owner", "pet"], "table_names": ["owner", "pet"],
        "column_names_original": [[-1, "*"], [0, "owner_id"], [0, "name"], [1, "pet_id"],
                                  [1, "owner_id"], [1, "name"], [1, "age"]],
        "column_names": [[-1, "*"], [0, "owner id"], [0, "name"], [1, "pet id"], [1, "owner id"],
                         [1, "name"], [1, "age"]],
        "column_types": ["text", "number", "text", "number", "number", "text", "number"],
        "primary_keys": [1, 3], "foreign_keys": [[4, 1]],
    }]  # fmt: skip
    (folder / "tables.json").write_text(json.dumps(tables))
    records = [{"db_id": "pet_shop", "question": q, "query": sql} for q, sql in SPIDER_QUESTIONS]
    (folder / "train_spider.json").write_text(json.dumps(records))
    (folder / "dev.json").write_text(json.dumps(records[:4]))
    return folder


def coursera_documents() -> list[dict]:
    """Coursera's layout: ``Question n. …`` with ``A. …`` options; answers are bare letters,
    several for some questions (``AC``)."""
    docs = []
    for d in range(5):
        instructions, outputs = [], []
        for q in range(3):
            instructions.append(
                f"Question {q + 1}. Which statements about lecture {d} are true?\nA. It has {q} "
                f"slides\nB. It lasts {d} hours\nC. It is about topic {q}\nD. It was cancelled"
            )
            outputs.append(["AC", "B", "ABD"][q] if d % 2 else "C")
        docs.append({"input": f"Transcript of lecture {d}. " * 4, "instructions": instructions,
                     "outputs": outputs, "evaluation": "exam"})  # fmt: skip
    return docs


def tpo_documents() -> list[dict]:
    """TPO's layout: a lower-case question with ``A. …`` options, a bare letter."""
    return [
        {
            "input": f"Lecture {d}: the professor talks about painting. " * 3,
            "instructions": [
                f"what is lecture {d} about\nA. music\nB. painting\nC. sport\nD. food"
            ],
            "outputs": ["B"],
            "evaluation": "exam",
        }
        for d in range(4)
    ]


def write_leval(folder: Path) -> Path:
    """``closed-ended/coursera.jsonl`` and ``closed-ended/tpo.jsonl``."""
    closed = folder / "closed-ended"
    closed.mkdir(parents=True, exist_ok=True)
    for name, docs in (("coursera", coursera_documents()), ("tpo", tpo_documents())):
        (closed / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return folder
