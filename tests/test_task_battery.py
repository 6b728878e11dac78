"""One battery over every task: each built-in name parses on the command line and serves batches
that decode to its text; each task class fits briefly and writes its predict records; the task
fields typed on the command line behave exactly as in YAML (the CLI values of the old
``task_args``: ``train_size 400``, ``validation_ratio 0.3``, ``seed 1``)."""

import csv
import json
import re

import pytest

from ssmlora_app.cli import build_cli, main
from ssmlora_app.data import TaskDataModule
from ssmlora_app.tasks import TASKS, CustomTask, DFATask, Task, get_task
from ssmlora_app.tasks.vocab import byte_tokenizer
from tests.conftest import REPO
from tests.generation_data import write_dart, write_leval, write_samsum, write_spider
from tests.test_data import write_glue
from tests.test_multiple_choice import _article

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64}  # fmt: skip
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 64}  # fmt: skip
"""The encoder of the tasks whose heads decoders lack (extractive QA, multiple choice)."""
SQUAD_V2 = REPO / "tests" / "data" / "squad_v2_task"
LORA = {"class_path": "ssmlora_app.adapters.LoRAConfig",
        "init_args": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}  # fmt: skip
LORA_BERT = {"class_path": "ssmlora_app.adapters.LoRAConfig",
             "init_args": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}}  # fmt: skip


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


SUPERGLUE_ROWS = {
    "BoolQ": lambda i: {"question": f"is it {i}", "passage": f"It is {i}.", "label": i % 2 == 0},
    "CB": lambda i: {"premise": f"P {i}.", "hypothesis": f"H {i}.",
                     "label": ["entailment", "contradiction", "neutral"][i % 3]},
    "COPA": lambda i: {"premise": f"The {i} fell.", "choice1": "It broke.", "choice2": "It flew.",
                       "question": "effect", "label": i % 2},
    "RTE": lambda i: {"premise": f"P {i}.", "hypothesis": f"H {i}.",
                      "label": ["entailment", "not_entailment"][i % 2]},
    "WiC": lambda i: {"word": "bank", "sentence1": f"The bank {i}.", "sentence2": "A river bank.",
                      "label": i % 2 == 0},
    "WSC": lambda i: {"text": f"Ann met Bo {i}; she smiled.", "label": i % 2 == 0,
                      "target": {"span1_text": "Ann", "span2_text": "she"}},
    "MultiRC": lambda i: {"idx": i, "passage": {"text": f"Passage {i}.", "questions": [
        {"idx": 0, "question": f"Q{i}?", "answers": [{"idx": 0, "text": "yes", "label": 1},
                                                     {"idx": 1, "text": "no", "label": 0}]}]}},
}  # fmt: skip


def _leval(path, kind: str):
    docs = []
    for d in range(5):
        if kind == "quality":
            instructions = [f"Which {d}?\n\n (A) one\n (B) two\n (C) three\n (D) four"]
            outputs = [f"({'ABCD'[d % 4]}) {['one', 'two', 'three', 'four'][d % 4]}"]
        else:
            instructions, outputs = [f"What about {d}?"], [f"It is {d}."]
        docs.append({"input": f"Document {d} says things. " * 3, "instructions": instructions,
                     "outputs": outputs})  # fmt: skip
    _jsonl(path, docs)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Tiny files for every task that reads files (GLUE, SuperGLUE, L-Eval, word problems, a
    byte corpus, a custom CSV) and a byte-level tokenizer folder for the GLUE tasks."""
    root = tmp_path_factory.mktemp("data")
    for name in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"):
        write_glue(root / "glue", name)
    for folder, row in SUPERGLUE_ROWS.items():
        for file in ("train.jsonl", "val.jsonl"):
            _jsonl(root / "superglue" / folder / file, [row(i) for i in range(6)])
    _leval(root / "leval" / "closed-ended" / "quality.jsonl", "quality")
    _leval(root / "leval" / "open-ended" / "meeting_summ.jsonl", "qmsum")
    _leval(root / "leval" / "open-ended" / "narrative_qa.jsonl", "narrativeqa")
    write_leval(root / "leval")
    write_dart(root / "dart")
    write_samsum(root / "samsum")
    write_spider(root / "spider")
    with open(root / "A5=10.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "input", "target"])
        for i in range(20):
            inputs = [(i + k) % 60 for k in range(4)]
            writer.writerow([i, " ".join(map(str, inputs)), " ".join(map(str, inputs[::-1]))])
    (root / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    with open(root / "custom.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(
            [[f"{'good' if i % 2 else 'bad'} film {i}", f"l{i % 2}"] for i in range(20)]
        )
    for split in ("train", "dev"):  # SQuAD v1.1: the v2.0 fixture's answerable questions
        data = json.loads((SQUAD_V2 / f"{split}-v2.0.json").read_text())
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                paragraph["qas"] = [q for q in paragraph["qas"] if q["answers"]]
        (root / "squad").mkdir(exist_ok=True)
        (root / "squad" / f"{split}-v1.1.json").write_text(json.dumps(data))
    for folder in ("train", "dev", "test"):  # RACE in its original layout
        for level in ("middle", "high"):
            (root / "RACE" / folder / level).mkdir(parents=True)
            for i in range(3):
                text = json.dumps(_article(i, level))
                (root / "RACE" / folder / level / f"{i + 1}.txt").write_text(text)
    byte_tokenizer().save_pretrained(root / "tokenizer")
    return root


def setting(name: str, root) -> dict:
    """The data module arguments that serve the built-in task ``name`` from the tiny files."""
    task = get_task(name)
    kind = type(task).__name__
    if kind == "GlueTask":
        return {"data_dir": str(root / "glue"), "tokenizer": str(root / "tokenizer")}
    if kind == "SuperGlueTask":
        return {"data_dir": str(root / "superglue")}
    if kind in ("QualityTask", "QMSumTask", "NarrativeQATask"):
        return {"data_dir": str(root / "leval"), "max_length": 96, "max_new_tokens": 4}
    if kind == "SquadTask":
        fields = {"version": task.version, "doc_stride": 16}  # windows of 64 bytes
        return {"task": {"class_path": "ssmlora_app.tasks.SquadTask", "init_args": fields},
                "data_dir": str(SQUAD_V2 if task.version == "2.0" else root / "squad")}  # fmt: skip
    if kind == "RaceTask":
        return {"data_dir": str(root / "RACE")}
    if kind == "LEvalExamTask":  # Coursera's layout: several right letters, A. options; beams
        return {"data_dir": str(root / "leval"), "max_length": 192, "max_new_tokens": 4,
                "num_beams": 2}  # fmt: skip
    if kind == "DartTask":
        return {"task": {"class_path": "ssmlora_app.tasks.DartTask",
                         "init_args": {"meteor_synonyms": False}},
                "data_dir": str(root / "dart"), "max_length": 160, "max_new_tokens": 8}  # fmt: skip
    if kind == "SamSumTask":
        return {"data_dir": str(root / "samsum"), "max_length": 160, "max_new_tokens": 8}
    if kind == "SpiderTask":
        return {"data_dir": str(root / "spider"), "max_length": 512, "max_new_tokens": 8}
    if kind == "WordProblemCSVTask":
        return {"data_dir": str(root)}
    if kind == "ByteLMTask":
        return {"task": {"class_path": "ssmlora_app.tasks.ByteLMTask",
                         "init_args": {"window": 32}}, "data_dir": str(root / "corpus.txt")}  # fmt: skip
    if kind == "CustomTask":
        return {"task": {"class_path": "ssmlora_app.tasks.CustomTask",
                         "init_args": {"train_file": str(root / "custom.csv")}}}  # fmt: skip
    if kind in ("DFATask", "ParityTask", "WordProblemTask"):
        fields = {"train_length": 6, "eval_lengths": [8], "train_size": 16, "eval_size": 4}
        return {"task": {"class_path": f"ssmlora_app.tasks.{kind}", "init_args": fields}}
    return {}


def _instance(value) -> Task | str:
    if isinstance(value, dict):
        from ssmlora_app.run import task_from_config

        return task_from_config(value)
    return value


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_serves_batches_that_decode_to_its_text(name, data_root):
    args = {"task": name, "max_length": 64, "batch_size": 2, **setting(name, data_root)}
    args["task"] = _instance(args["task"])
    data = TaskDataModule(**args)
    data.setup("validate")
    split = data.task.eval_splits[0]
    raw = data.objective.load_split(data.task, split, args.get("data_dir"))
    batch = data.eval_collator([data.splits[split][0]])
    ids = batch.inputs["input_ids"][0] if hasattr(batch, "inputs") else batch.input_ids[0]
    ids = ids[0] if ids.dim() == 2 else ids  # multiple choice: (K, L), the first option
    text = _squeeze(data.tokenizer.decode(ids, skip_special_tokens=True))
    if "text_a" in raw.column_names:  # the model reads the example's text
        assert _squeeze(raw[0]["text_a"])[:40] in text, (text, raw[0]["text_a"])
    elif "question" in raw.column_names:  # QA, multiple choice: the question and its context
        assert _squeeze(raw[0]["question"])[:30] in text, (text, raw[0]["question"])
        assert _squeeze(raw[0]["context"])[:10] in text, (text, raw[0]["context"])
    elif raw[0]["prompt"]:
        assert _squeeze(raw[0]["prompt"])[-40:] in text, (text, raw[0]["prompt"])
    else:  # byte LM: the window's bytes
        assert text == _squeeze(bytes(raw[0]["target_ids"]).decode())
    assert batch.size == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_name_parses_on_the_command_line(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", "configs/tiny/llama_quality_lora.yaml", f"--data.task={name}",
              "--print_config"])  # fmt: skip
    assert done.value.code in (0, None)
    assert f"task: {name}" in capsys.readouterr().out


def _one_per_class() -> list[str]:
    seen, names = set(), []
    for name, factory in TASKS.items():
        kind = type(factory())
        if kind not in seen:
            seen.add(kind)
            names.append(name)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("name", _one_per_class())
def test_each_task_class_fits_and_writes_predict_records(name, data_root, tmp_path):
    fields = {"task": name, "max_length": 64, "batch_size": 4, "eval_batch_size": 4,
              "max_train_samples": 8, "max_eval_samples": 4, **setting(name, data_root)}  # fmt: skip
    args = [f"--data.{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in fields.items()
            if k != "tokenizer"]  # fmt: skip
    if "tokenizer" in fields:  # the CLI links the tokenizer from the backbone
        args.append(f"--model.backbone.tokenizer={fields['tokenizer']}")
    encoder = {"extractive_qa", "multiple_choice"} & set(get_task(name).objectives[:1])
    backbone, lora = (TINY_BERT, LORA_BERT) if encoder else (TINY_LLAMA, LORA)
    common = [f"--model.backbone.config={json.dumps(backbone)}", f"--model.adapter={json.dumps(lora)}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=t",
              "--trainer.logger.init_args.version=v", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false", *args]  # fmt: skip
    main(["fit", *common, "--trainer.max_steps=2"])
    run = tmp_path / "t" / "v"
    main(["predict", *common, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
          f"--predictions.output_dir={tmp_path / 'p'}"])  # fmt: skip
    data = TaskDataModule(**{**fields, "task": _instance(fields["task"])})
    data.setup("predict")
    for split in data.predict_split_names():
        (path,) = (tmp_path / "p").glob(f"*_{split}.jsonl")
        records = [json.loads(line) for line in path.read_text().splitlines()]
        features = data.splits[split]  # extractive QA: windows, one record per question
        n = len(set(features["example"])) if "example" in features.column_names else len(features)
        assert [r["index"] for r in records] == list(range(n))
        assert all("prediction" in r and "label" in r for r in records), records[:2]


# The task's fields on the command line, typed as in YAML.
def _data(args: list[str]) -> TaskDataModule:
    cli = build_cli(["--config", "configs/tiny/llama_quality_lora.yaml", *args], run=False)
    return cli.datamodule


@pytest.mark.slow
def test_cli_typed_fields_equal_the_yaml_form(data_root, tmp_path):
    typed = _data(["--data.task=DFATask", "--data.task.train_size=400", "--data.task.seed=1",
                   "--data.task.eval_lengths=[8, 12]", "--data.task.train_length=6"])  # fmt: skip
    assert typed.task == DFATask(train_size=400, seed=1, eval_lengths=(8, 12), train_length=6)
    config = tmp_path / "dfa.yaml"
    config.write_text(json.dumps({"data": {"task": {"class_path": "ssmlora_app.tasks.DFATask",
        "init_args": {"train_size": 400, "seed": 1, "eval_lengths": [8, 12], "train_length": 6}}}}))  # fmt: skip
    from_yaml = _data([f"--config={config}"])
    assert from_yaml.task == typed.task
    assert typed.task.examples("validation") == from_yaml.task.examples("validation")
    assert typed.task.examples("validation") != DFATask(train_length=6).examples("validation")

    custom = ["--data.task=CustomTask", f"--data.task.train_file={data_root / 'custom.csv'}",
              "--data.task.validation_ratio=0.3", "--data.task.seed=1",
              "--data.objective=classification"]  # fmt: skip
    data = _data(custom)
    assert data.task.validation_ratio == 0.3 and data.task.seed == 1
    expected = CustomTask(train_file=str(data_root / "custom.csv"), validation_ratio=0.3, seed=1)
    expected.check_data_dir(None)
    data.setup("validate")
    assert list(data.splits["validation"]["labels"]) == list(
        expected.load_split("validation", None)["label"]
    )
    assert len(data.splits["validation"]) == 6  # 30% of each class's 10 rows
    other_seed = CustomTask(train_file=str(data_root / "custom.csv"), validation_ratio=0.3, seed=0)
    other_seed.check_data_dir(None)
    assert (
        other_seed.load_split("validation", None)["text_a"]
        != expected.load_split("validation", None)["text_a"]
    )


@pytest.mark.slow
def test_an_unknown_task_field_or_name_is_refused(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", "configs/tiny/llama_quality_lora.yaml", "--data.task=DFATask",
              "--data.task.colour=red", "--print_config"])  # fmt: skip
    assert done.value.code == 2 and "colour" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", "configs/tiny/llama_quality_lora.yaml", "--data.task=sst3"])
    assert done.value.code == 2
    assert "Unknown task 'sst3'" in capsys.readouterr().err


def test_every_task_is_a_task_with_its_capabilities_declared():
    """Optional capabilities are attributes of :class:`Task` with defaults, so generic code reads
    them (no ``getattr`` probing); a task overriding one declares it in its class."""
    for name, factory in TASKS.items():
        task = factory()
        assert isinstance(task, Task), name
        known = {"classification", "causal_lm", "extractive_qa", "multiple_choice"}
        assert task.objectives and set(task.objectives) <= known, name
        if "causal_lm" in task.objectives:
            assert task.lm_metrics and task.lm_eval in (
                "choice",
                "generate",
                "teacher_forced",
                "label_words",
            )
    assert get_task("sst2").submission and not get_task("boolq").submission
    assert get_task("dfa").test_split and not get_task("sst2").test_split
    assert get_task("multirc").grouped and not get_task("boolq").grouped
