"""Multiple choice on encoders: RACE in its original layout (the real dev and test files) and
SuperGLUE COPA, options paired with their context, per-level accuracy, tiny fits."""

import json

import numpy as np
import pytest
import torch

from ssmlora_app.cli import main
from ssmlora_app.data import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives.multiple_choice import LevelAccuracy, MultipleChoice, option_text
from ssmlora_app.tasks import RaceTask, SuperGlueTask, TaskInfo
from tests.helpers import wordpiece_tokenizer

RACE_COUNTS = {("validation", "middle"): 1436, ("validation", "high"): 3451,
               ("test", "middle"): 1436, ("test", "high"): 3498}  # fmt: skip
"""Questions per split and level of the original release (the RACE paper's Table 1)."""


def test_an_option_fills_the_blank_or_follows_the_question():
    assert option_text("John Denver is a great  _  singer.", "folk") == (
        "John Denver is a great  folk  singer."
    )
    assert option_text("Which sentence is right?", "None.") == "Which sentence is right? None."
    assert option_text("", "It broke.") == "It broke."


@pytest.mark.slow
def test_the_real_race_dev_and_test_files_load_question_by_question(shared_data):
    root = shared_data / "race"
    for split in ("validation", "test"):
        rows = RaceTask().load_choice_split(split, str(root))
        levels = list(rows["level"])
        for level in ("middle", "high"):
            assert levels.count(level) == RACE_COUNTS[(split, level)]
        assert len(set(rows["id"])) == len(rows)
        assert all(len(c) == 4 for c in rows["choices"]) and set(rows["label"]) == {0, 1, 2, 3}
        only = RaceTask(level="high").load_choice_split(split, str(root))
        assert len(only) == RACE_COUNTS[(split, "high")] and set(only["level"]) == {"high"}
    # A row against its file, read here directly.
    path = root / "RACE" / "dev" / "middle" / "1011.txt"
    record = json.loads(path.read_text())
    rows = RaceTask(level="middle").load_choice_split("validation", str(root))
    row = rows[list(rows["id"]).index(f"{record['id']}-2")]
    assert row["context"] == record["article"] and row["question"] == record["questions"][2]
    assert row["choices"] == record["options"][2]
    assert row["label"] == "ABCD".index(record["answers"][2])


@pytest.mark.slow
def test_race_options_are_paired_with_the_article_and_the_question(shared_data):
    root = str(shared_data / "race")
    data = TaskDataModule(task="race", data_dir=root, max_length=96, batch_size=2,
                          max_eval_samples=50, tokenizer=str(shared_data / "models" /
                                                             "roberta-base-tokenizer"))  # fmt: skip
    data.setup("validate")
    raw = data.objective.load_split(data.task, "validation", root)
    raw = raw.shuffle(seed=42).select(range(50))  # the data module's draw
    batch = data.eval_collator([data.splits["validation"][i] for i in range(2)])
    assert (
        batch.inputs["input_ids"].shape[:2] == (2, 4) and batch.inputs["input_ids"].shape[2] <= 96
    )
    for b in range(2):
        row = raw[b]
        assert int(batch.labels[b]) == row["label"]
        assert int(batch.levels[b]) == ("middle", "high").index(row["level"])
        for k in range(4):
            text = data.tokenizer.decode(batch.inputs["input_ids"][b, k], skip_special_tokens=True)
            assert text.startswith(row["context"][:20])  # the article, cut at its end
            assert text.endswith(option_text(row["question"], row["choices"][k]).strip()[-20:])
    assert data.majority_baseline() < 0.4


@pytest.mark.slow
def test_copa_val_as_multiple_choice(shared_data):
    task = SuperGlueTask("copa")
    assert "multiple_choice" in task.objectives
    rows = task.load_choice_split("validation", str(shared_data / "superglue"))
    assert len(rows) == 100 and list(rows["label"]).count(0) == 55
    lines = (shared_data / "superglue" / "COPA" / "val.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert rows[0]["context"] == first["premise"]
    assert rows[0]["choices"] == [first["choice1"], first["choice2"]]
    assert rows[0]["question"] == {"cause": "What was the cause?",
                                   "effect": "What happened as a result?"}[first["question"]]  # fmt: skip
    tokenizer = wordpiece_tokenizer(
        [f"{r['context']} {r['question']} {' '.join(r['choices'])}" for r in rows]
    )
    info = TaskInfo(task="copa", num_labels=2, problem_type="single_label_classification",
                    metrics=("accuracy",), eval_splits=("validation",), max_length=64,
                    objective="multiple_choice")  # fmt: skip
    encoded = MultipleChoice(info).encode(rows, tokenizer, task, "copa")
    text = tokenizer.decode(encoded[0]["input_ids"][1])
    assert text == tokenizer.decode(
        tokenizer(first["premise"], f"{rows[0]['question']} {first['choice2']}")["input_ids"]
    )
    assert "[UNK]" not in text and text.count("[SEP]") == 2


def _levels_info():
    return TaskInfo(task="race", num_labels=4, problem_type="single_label_classification",
                    metrics=("accuracy", "accuracy_middle", "accuracy_high"),
                    eval_splits=("validation",), objective="multiple_choice")  # fmt: skip


def test_accuracy_per_level_over_batches():
    objective = MultipleChoice(_levels_info())
    assert objective.levels == ("middle", "high")
    metrics = objective.metrics("val")
    rng = np.random.default_rng(0)
    preds, target, levels = (rng.integers(0, k, 300) for k in (4, 4, 2))
    for part in np.array_split(np.arange(300), 7):
        metrics.update(torch.tensor(preds[part]), torch.tensor(target[part]),
                       levels=torch.tensor(levels[part]))  # fmt: skip
    values = {k: float(v) for k, v in metrics.compute().items()}
    right = preds == target
    assert values["val/accuracy"] == pytest.approx(right.mean())
    assert values["val/accuracy_middle"] == pytest.approx(right[levels == 0].mean())
    assert values["val/accuracy_high"] == pytest.approx(right[levels == 1].mean())
    assert values["val/accuracy_middle"] != values["val/accuracy_high"]
    empty = LevelAccuracy(1)
    empty.update(torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))
    assert float(empty.compute()) == 0.0  # no example of the level: 0 of 0


def _article(i: int, level: str) -> dict:
    return {"id": f"{level}{i}.txt", "article": f"Tom has {i + 2} red apples and a blue kite.",
            "questions": ["How many apples does Tom have?", "The kite is _ ."],
            "options": [[str(i + 2), str(i + 3), str(i + 4), "none"],
                        ["red", "blue", "green", "big"]],
            "answers": ["ABCD"[i % 2], "B"]}  # fmt: skip


@pytest.fixture(scope="module")
def race_root(tmp_path_factory):
    """A tiny RACE in the original layout: 6 articles (12 questions) per split and level."""
    root = tmp_path_factory.mktemp("race") / "RACE"
    for folder in ("train", "dev", "test"):
        for level in ("middle", "high"):
            (root / folder / level).mkdir(parents=True)
            for i in range(6):
                text = json.dumps(_article(i, level))
                (root / folder / level / f"{i + 1}.txt").write_text(text)
    return root


def test_race_layout_errors(race_root, tmp_path):
    with pytest.raises(SsmloraError, match="has no dev/middle, dev/high"):
        RaceTask().check_data_dir(str(tmp_path))
    RaceTask().check_data_dir(str(race_root.parent))  # the parent of RACE/ is fine too
    bad = _article(0, "high") | {"answers": ["E", "B"]}
    (tmp_path / "dev" / "high").mkdir(parents=True)
    (tmp_path / "dev" / "high" / "1.txt").write_text(json.dumps(bad))
    with pytest.raises(SsmloraError, match="answer in A-D"):
        RaceTask(level="high").load_choice_split("validation", str(tmp_path))
    with pytest.raises(SsmloraError, match="no multiple-choice form"):
        SuperGlueTask("boolq").load_choice_split("validation", None)


TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128}  # fmt: skip


@pytest.mark.slow
def test_a_tiny_race_fit_is_scored_per_level_on_validation_and_test(race_root, tmp_path):
    """SSMLoRA full_model (the head through its adapters); LoRA and HRM on the multiple-choice
    head: test_task_heads.py; fit and predict records for RACE: test_task_battery.py."""
    ssmlora = {"class_path": "ssmlora_app.adapters.SSMLoRAConfig",
               "init_args": {"preset": "full_model", "r": 4}}  # fmt: skip
    common = ["--data.task=race", f"--data.data_dir={race_root}", "--data.max_length=96",
              "--data.batch_size=4", f"--model.backbone.config={json.dumps(TINY_BERT)}",
              f"--model.adapter={json.dumps(ssmlora)}",
              f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--trainer.logger.init_args.name=t", "--trainer.logger.init_args.version=v",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
              "--trainer.accelerator=cpu"]  # fmt: skip
    main(["fit", *common, "--trainer.max_epochs=1"])
    checkpoint = f"--ckpt_path={tmp_path / 't' / 'v' / 'checkpoints' / 'last.ckpt'}"
    main(["test", *common, checkpoint])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (tmp_path / "t" / "v").rglob("events.out.tfevents*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    for stage in ("val", "test"):  # test: RACE's held-out test split, logged inside the run
        assert {f"{stage}/accuracy{s}" for s in ("", "_middle", "_high")} <= tags, tags


@pytest.mark.slow
def test_copa_fits_as_multiple_choice_on_an_encoder(tmp_path):
    rows = [{"premise": f"The glass {i} fell.", "choice1": "It broke.", "choice2": "It sang.",
             "question": "effect", "label": i % 2, "idx": i} for i in range(8)]  # fmt: skip
    folder = tmp_path / "COPA"
    folder.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = TaskDataModule(task="copa", objective="multiple_choice", data_dir=str(tmp_path),
                          max_length=48, batch_size=4)  # fmt: skip
    assert data.task_info.objective == "multiple_choice"
    import lightning as L

    from ssmlora_app.adapters import LoRAConfig
    from ssmlora_app.backbone import BackboneConfig
    from ssmlora_app.module import AdapterModule

    module = AdapterModule(BackboneConfig(config=TINY_BERT), LoRAConfig(r=4),
                           task_info=data.task_info)  # fmt: skip
    assert type(module.model).__name__ == "BertForMultipleChoice"
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, data)
    assert 0 <= float(trainer.callback_metrics["val/accuracy"]) <= 1
    assert data.majority_baseline() == 0.5
