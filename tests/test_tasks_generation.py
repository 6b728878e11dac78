"""DART, SAMSum and Spider as causal-LM generation tasks: the benchmark's prompts, the splits
(official, exploded training references, Spider's "tvt"), the hub loaders, and the metric wiring
end to end — fixed predictions go through the data module's batches and the objective's
``evaluate`` and come out as the official evaluators' numbers (DART BLEU: HF ``evaluate``'s code;
Spider: taoyds/spider ``evaluation.py`` on its example files)."""

import json

import datasets
import numpy as np
import pytest
import torch

from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.data import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.scoring.dart import read_dart_json
from ssmlora_app.scoring.meteor import meteor
from ssmlora_app.scoring.rouge import rouge_f
from ssmlora_app.tasks import DartTask, SamSumTask, SpiderTask
from ssmlora_app.tasks.benchmark import tvt_split
from tests.generation_data import SAMSUM, write_dart, write_spider

TINY_LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 64}  # fmt: skip
EVALUATE_LEAVE_ONE_OUT_BLEU = 0.4897790545776039
"""HF ``evaluate``'s ``bleu`` on DART dev: first reference against the others (see
tests/test_scoring_dart.py, where it is reproduced bit for bit)."""


def score(
    data: TaskDataModule, split: str, predictions: list[str], loss: bool = True
) -> dict[str, float]:
    """``predictions`` (dataset order) scored through the evaluation batches and the objective's
    ``evaluate`` on a tiny model (for the loss), generation replaced by the fixed answers.
    ``loss=False`` also replaces the teacher-forced loss by zeros (for long prompts, where the
    tiny model's attention would cost seconds and the loss is not what the test checks)."""
    data.setup("test" if split == "test" else "validate")
    objective = data.objective
    model = objective.build_model(BackboneConfig(config=TINY_LLAMA)).eval()
    served: list[str] = []
    if not loss:

        def no_loss(model, batch):
            zeros = torch.zeros(len(batch.prompts.lengths))
            return zeros, zeros, torch.ones_like(zeros)

        objective.target_stats = no_loss

    def fixed_answers(model, prompts, *rest) -> list[str]:
        answers = predictions[len(served) : len(served) + len(prompts.lengths)]
        served.extend(answers)
        return answers

    objective.generate_text = fixed_answers
    metrics = objective.metrics("x")
    loader = data.test_dataloader() if split == "test" else data.val_dataloader()
    with torch.no_grad():
        for batch in loader[0]:
            objective.evaluate(model, batch, metrics)
    assert served == predictions  # every prediction was scored, once, in order
    return {k.removeprefix("x/"): float(v) for k, v in metrics.compute().items()}


# ---- DART -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dart_dev(shared_data):
    path = shared_data / "dart" / "dart-v1.1.1-full-dev.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.mark.slow
def test_dart_prompt_and_splits(shared_data, dart_dev, tmp_path):
    """The benchmark's prompt; validation is the dev JSON (2768 entries, all references), test
    the official XML (5097 / 12552), training one example per reference."""
    folder = shared_data / "dart"
    task = DartTask(meteor_synonyms=False)
    dev = task.load_lm_split("validation", str(folder))
    assert len(dev) == 2768 and sum(len(r) for r in dev["references"]) == 6980
    assert dev[0]["prompt"] == (
        "Generate text for the following RDF triples:\nMars Hill College : JOINED : 1973 | "
        "Mars Hill College : LOCATION : Mars Hill, North Carolina###"
    )
    assert dev[0]["target"] == "A school from Mars Hill, North Carolina, joined in 1973."
    test = task.load_lm_split("test", str(folder))  # read from the XML (no test JSON)
    assert len(test) == 5097 and sum(len(r) for r in test["references"]) == 12552
    (tmp_path / "dart-v1.1.1-full-train.json").write_bytes(dart_dev.read_bytes())
    train = task.load_lm_split("train", str(tmp_path))
    assert len(train) == 6980 and all(r == [t] for r, t in zip(train["references"], train["target"]))  # fmt: skip
    with pytest.raises(SsmloraError, match=r"no dart-v1\.1\.1-full-train\.json or .*\.xml"):
        task.load_lm_split("train", str(folder))


@pytest.mark.slow
def test_dart_bleu_and_meteor_through_the_objective(dart_dev, tmp_path):
    """DART dev entries with two or more references: the first is the prediction, the others the
    references (a DART folder written so). BLEU through batches of 64 equals HF ``evaluate``'s
    number; METEOR (no synonyms: no WordNet here) equals the scorer over the whole list."""
    items = [i for i in json.loads(dart_dev.read_text()) if len(i["annotations"]) >= 2]
    predictions = [i["annotations"][0]["text"] for i in items]
    for item in items:
        item["annotations"] = item["annotations"][1:]
    (tmp_path / "dart-v1.1.1-full-dev.json").write_text(json.dumps(items))
    data = TaskDataModule(task=DartTask(meteor_synonyms=False), data_dir=str(tmp_path),
                          max_length=1024, batch_size=64)  # fmt: skip
    got = score(data, "validation", predictions, loss=False)
    assert len(items) == 1668
    assert got["bleu"] == pytest.approx(EVALUATE_LEAVE_ONE_OUT_BLEU, abs=1e-7)
    references = [[a["text"] for a in i["annotations"]] for i in items]
    expected = meteor(predictions, references, synonyms=False)["meteor"]
    assert got["meteor_no_synonyms"] == pytest.approx(expected, abs=1e-6)
    assert 0.3 < expected < 0.9  # a real overlap, not an empty score


def test_dart_hub_rows_equal_the_local_ones(dart_dev, monkeypatch):
    """The hub layout (``tripleset``, ``annotations: {source: [...], text: [...]}``)."""
    entries = read_dart_json(dart_dev)[:20]
    hub = datasets.Dataset.from_list(
        [
            {
                "tripleset": [list(t) for t in e.triples],
                "annotations": {"source": ["x"] * len(e.references), "text": list(e.references)},
            }
            for e in entries
        ]
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, split: hub)
    task = DartTask(meteor_synonyms=False)
    local = task.load_lm_split("validation", str(dart_dev.parent)).select(range(20))
    assert task.load_lm_split("validation", None).to_list() == local.to_list()


def test_dart_needs_wordnet_for_meteor_or_says_so(tmp_path):
    from ssmlora_app.scoring import ScoringError
    from ssmlora_app.scoring.meteor import default_wordnet

    try:
        default_wordnet()
    except ScoringError:  # no WordNet here: the clear error is the test
        with pytest.raises(SsmloraError, match="meteor_synonyms=false"):
            TaskDataModule(task=DartTask(), data_dir=str(write_dart(tmp_path)))
        return
    assert TaskDataModule(task=DartTask(), data_dir=str(write_dart(tmp_path))).task_info.metrics == (
        "bleu", "meteor")  # fmt: skip


# ---- SAMSum -----------------------------------------------------------------------------------


def test_samsum_format_and_rouge_through_the_objective():
    """The dialogue is the document, ``###`` the prompt, the summary the target; ROUGE-1/2/L
    through the batches equal the scorer's (HF ``evaluate``'s ``rouge``)."""
    data = TaskDataModule(task="samsum", data_dir=str(SAMSUM), max_length=512, batch_size=3)
    data.setup("validate")
    raw = SamSumTask().load_lm_split("validation", str(SAMSUM))
    row = data.splits["validation"][0]
    text = data.tokenizer.decode(row["input_ids"])
    assert text == raw[0]["document"] + "###" + raw[0]["target"] + "<eos>"
    assert "\r\n" in raw[0]["document"]  # SAMSum's turns, kept as they are
    predictions = [d.split("\r\n")[0].split(": ", 1)[1] for d in raw["document"]]
    got = score(data, "validation", predictions)
    expected = rouge_f(predictions, [r[0] for r in raw["references"]])
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6)
    assert 0.1 < expected["rouge1"] < 0.9


def test_samsum_hub_rows_equal_the_local_ones(monkeypatch):
    records = json.loads((SAMSUM / "test.json").read_text())
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, split: datasets.Dataset.from_list(records))  # fmt: skip
    task = SamSumTask()
    assert task.load_lm_split("test", None).to_list() == task.load_lm_split("test", str(SAMSUM)).to_list()  # fmt: skip
    with pytest.raises(SsmloraError, match=r"has no val\.json"):
        TaskDataModule(task="samsum", data_dir=str(SAMSUM.parent))


# ---- Spider -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spider(shared_data):
    path = shared_data / "spider"
    if not (path / "tables.json").is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_spider_prompt_as_the_benchmark_writes_it(spider):
    task = SpiderTask(missing_databases="drop")
    row = task.load_lm_split("test", str(spider))[0]
    assert row["prompt"] == (
        "Create a sql request for the following question and schema:\n###Question: How many "
        "singers do we have?\\Schema: stadium: stadium_id number ,  location text ,  name text ,"
        "  capacity number ,  highest number ,  lowest number ,  average number ,  foreign:  ,  "
        "primary: stadium_id | singer: singer_id number ,  name text ,  country text ,  "
        "song_name text ,  song_release_year text ,  age number ,  is_male others ,  foreign:  "
        ",  primary: singer_id | concert: concert_id number ,  concert_name text ,  theme text "
        ",  stadium_id text ,  year text ,  foreign: stadium_id from stadium ,  primary: "
        "concert_id | singer_in_concert: concert_id number ,  singer_id text ,  foreign: "
        "singer_id from singer , concert_id from concert ,  primary: concert_id\n###"
    )
    assert row["target"] == "SELECT count(*) FROM singer"
    assert row["references"] == ["SELECT count(*) FROM singer\tconcert_singer"]
    lower = SpiderTask(missing_databases="drop", lowercase_sql=True).load_lm_split("test", str(spider))  # fmt: skip
    assert lower[0]["target"] == "select count(*) from singer"


def test_spider_missing_databases_are_an_error_or_dropped_by_name(spider):
    with pytest.raises(SsmloraError, match=r"wta_1 \(62\) question"):
        SpiderTask().load_lm_split("test", str(spider))
    with pytest.warns(UserWarning, match=r"wta_1 \(62\)"):
        assert len(SpiderTask(missing_databases="drop").load_lm_split("test", str(spider))) == 972
    with pytest.raises(SsmloraError, match=r"set data\.task\.spider_dir"):
        TaskDataModule(task="spider", data_dir=None)


def test_spider_tvt_split(spider, tmp_path):
    """train / validation: 80% / 20% of the training questions, disjoint, together all of them,
    the rows numpy's generator seeded 123 draws (``datasets``' ``train_test_split``, as the
    benchmark); test: the dev file."""
    records = json.loads((spider / "dev.json").read_text())
    (tmp_path / "train_spider.json").write_text(json.dumps(records))
    (tmp_path / "dev.json").write_text(json.dumps(records[:5]))
    task = SpiderTask(spider_dir=str(spider), missing_databases="drop")
    with pytest.warns(UserWarning):
        train = task.questions("train", str(tmp_path))
        validation = task.questions("validation", str(tmp_path))
    index = datasets.Dataset.from_dict({"i": list(range(len(records)))})
    val_ids, train_ids = tvt_split(index, "validation")["i"], tvt_split(index, "train")["i"]
    assert (len(val_ids), len(train_ids)) == (207, 827)
    assert set(val_ids).isdisjoint(train_ids) and set(val_ids) | set(train_ids) == set(range(1034))
    assert val_ids == np.random.default_rng(123).permutation(1034)[:207].tolist()
    kept = [records[i]["query"] for i in val_ids if records[i]["db_id"] != "wta_1"]
    assert [r["query"] for r in validation] == kept
    assert len(train) == sum(records[i]["db_id"] != "wta_1" for i in train_ids)
    assert len(task.questions("test", str(tmp_path))) == 5


def test_spider_scores_a_tiny_database_by_hand(tmp_path):
    folder = write_spider(tmp_path / "spider")
    data = TaskDataModule(task="spider", data_dir=str(folder), max_length=1024, batch_size=2)
    assert data.task_info.metrics[:2] == ("execution_accuracy", "exact_set_match")
    # dev: count(*) pet; name FROM pet; max(age); names older than 3
    predictions = [
        "SELECT count(*) FROM pet",  # right
        "SELECT name FROM owner",  # wrong table: neither
        "SELECT max(age) FROM pet WHERE age > 100",  # exact set match no, result differs
        "SELECT name FROM pet WHERE age > 4",  # same structure (values ignored), result differs
    ]
    got = score(data, "test", predictions)
    assert got["exact_set_match"] == pytest.approx(2 / 4)
    assert got["execution_accuracy"] == pytest.approx(1 / 4)


@pytest.mark.slow
def test_spider_official_example_through_the_objective(spider, tmp_path):
    """The official example pair (``evaluation_examples/{gold,pred}_example.txt``) through the
    task's test split (questions of dev.json, gold queries of the example file) and the
    objective, wta_1 dropped: the numbers ``evaluation.py`` prints (counted per level)."""
    from tests.test_scoring_spider import OFFICIAL_COUNT, OFFICIAL_EXACT, OFFICIAL_EXEC

    examples = spider / "evaluation_examples"
    gold = [line.split("\t") for line in (examples / "gold_example.txt").read_text().splitlines() if line.strip()]  # fmt: skip
    preds = [line.strip() for line in (examples / "pred_example.txt").read_text().splitlines() if line.strip()]  # fmt: skip
    questions = json.loads((spider / "dev.json").read_text())
    records = [{"question": q["question"], "query": g[0], "db_id": g[1]} for q, g in zip(questions, gold, strict=True)]  # fmt: skip
    (tmp_path / "dev.json").write_text(json.dumps(records))
    task = SpiderTask(spider_dir=str(spider), missing_databases="drop")
    with pytest.warns(UserWarning, match="wta_1"):
        data = TaskDataModule(task=task, data_dir=str(tmp_path), max_length=4096, batch_size=50)
        kept = [p for p, g in zip(preds, gold, strict=True) if g[1] != "wta_1"]
        got = score(data, "test", kept, loss=False)
    assert got["exact_set_match"] == pytest.approx(665 / 972, abs=1e-6)
    assert got["execution_accuracy"] == pytest.approx(403 / 972, abs=1e-6)
    for level, total in OFFICIAL_COUNT.items():
        if level != "all":
            assert got[f"exact_set_match_{level}"] == pytest.approx(OFFICIAL_EXACT[level] / total, abs=1e-6)  # fmt: skip
            assert got[f"execution_accuracy_{level}"] == pytest.approx(OFFICIAL_EXEC[level] / total, abs=1e-6)  # fmt: skip
