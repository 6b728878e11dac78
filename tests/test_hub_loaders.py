"""The hub loading paths of SQuAD and RACE, offline: the real local files rewritten in the hub's
row layout (``rajpurkar/squad``; ``ehovy/race``) and served by a stand-in ``load_dataset`` must
give the rows the local reader gives (users with internet take the hub path; nobody here can)."""

import json

import datasets
import pytest

from ssmlora_app.tasks.race import HUB_ID as RACE_HUB
from ssmlora_app.tasks.race import RaceTask, read_race_folder
from ssmlora_app.tasks.squad import HUB_IDS, SquadTask


def _squad_hub_rows(path, articles: int) -> list[dict]:
    """The first ``articles`` articles of an official SQuAD JSON, one hub row per question."""
    rows = []
    for article in json.loads(path.read_text())["data"][:articles]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append(
                    {
                        "id": qa["id"],
                        "title": article["title"],
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in qa["answers"]],
                            "answer_start": [a["answer_start"] for a in qa["answers"]],
                        },
                    }
                )
    return rows


@pytest.mark.slow
def test_squad_from_the_hub_layout_equals_the_official_file(shared_data, tmp_path, monkeypatch):
    official = shared_data / "squad" / "dev-v1.1.json"
    if not official.is_file():
        pytest.skip(f"{official} is absent")
    rows = _squad_hub_rows(official, articles=2)
    data = json.loads(official.read_text())
    data["data"] = data["data"][:2]
    (tmp_path / "dev-v1.1.json").write_text(json.dumps(data))
    calls = []

    def load_dataset(hub_id, split):
        calls.append((hub_id, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    task = SquadTask()
    hub = task.load_qa_split("validation", None)
    local = task.load_qa_split("validation", str(tmp_path))
    assert calls == [(HUB_IDS["1.1"], "validation")]
    assert len(hub) == len(local) > 100
    assert hub.to_list() == local.to_list()
    first = hub[0]  # the answer spans point into the context
    assert all(
        first["context"][s : s + len(t)] == t
        for t, s in zip(first["answers"], first["answer_starts"], strict=True)
    )


def _race_hub_row(row: dict) -> dict:
    """One question of the local reader as an ``ehovy/race`` row (``example_id``: the file)."""
    return {
        "example_id": row["id"].rsplit("-", 1)[0],
        "article": row["context"],
        "question": row["question"],
        "options": row["choices"],
        "answer": "ABCD"[row["label"]],
    }


@pytest.mark.slow
def test_race_from_the_hub_layout_equals_the_original_release(shared_data, monkeypatch):
    root = shared_data / "race" / "RACE"
    if not (root / "dev" / "middle").is_dir():
        pytest.skip(f"{root} is absent")
    local = {
        level: read_race_folder(root / "dev" / level, level)[:30] for level in ("middle", "high")
    }
    hub_rows = {level: [_race_hub_row(r) for r in rows] for level, rows in local.items()}
    calls = []

    def load_dataset(hub_id, level, split):
        calls.append((hub_id, level, split))
        return datasets.Dataset.from_list(hub_rows[level])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    got = RaceTask().load_choice_split("validation", None).to_list()
    assert calls == [(RACE_HUB, "middle", "validation"), (RACE_HUB, "high", "validation")]
    want = local["middle"] + local["high"]
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in w} == w
