"""GLUE as the SDLoRA repository runs it: the "tvt" protocol (sizes, disjointness, the rows of
numpy's generator seeded 123, test = the official dev) and label words written by the causal LM
(the format ``instruction###text###label<eos>``, answers read as classes, the metrics on them with
the out-of-class rule, the predict records), a short fit and test on a tiny model."""

import json
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from torchmetrics.classification import MatthewsCorrCoef

from ssmlora_app.cli import main
from ssmlora_app.data import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives import objective_for
from ssmlora_app.tasks import GlueTask
from ssmlora_app.tasks.glue_sdlora import PROMPTS
from ssmlora_app.tasks.vocab import byte_tokenizer
from tests.test_data import write_glue

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    byte_tokenizer().save_pretrained(path)
    return str(path)


def _rows(ds: datasets.Dataset) -> Counter:
    return Counter(zip(ds["text_a"], ds["text_b"], ds["label"], strict=True))


@pytest.mark.slow
def test_tvt_protocol_on_real_cola(shared_data):
    """validation = 20% of the official train (1711 of 8551), train the other 80%, together the
    official train; the rows are numpy's generator seeded 123 (``datasets``' train_test_split,
    as the repository); test = the official dev (1043)."""
    task = GlueTask("cola", protocol="tvt")
    root = str(shared_data / "glue")
    official = GlueTask("cola").load_split("train", root)
    train, validation = task.load_split("train", root), task.load_split("validation", root)
    assert (len(train), len(validation)) == (6840, 1711)
    assert _rows(train) + _rows(validation) == _rows(official)
    permutation = np.random.default_rng(123).permutation(len(official))
    assert validation.to_list() == official.select(permutation[:1711]).to_list()
    assert train.to_list() == official.select(permutation[1711:]).to_list()
    test = task.load_split("test", root)
    assert test.to_list() == GlueTask("cola").load_split("validation", root).to_list()
    assert task.eval_splits == ("validation",) and task.test_split and not task.submission
    assert task.prediction_file("test") == "CoLA_test.tsv"  # never a submission file's name


def test_tvt_mnli_test_is_matched_and_mismatched_together(tmp_path):
    root = write_glue(tmp_path, "mnli")
    task = GlueTask("mnli", protocol="tvt")
    test = task.load_split("test", str(root))
    matched = GlueTask("mnli").load_split("validation_matched", str(root))
    mismatched = GlueTask("mnli").load_split("validation_mismatched", str(root))
    assert test.to_list() == matched.to_list() + mismatched.to_list()
    with pytest.raises(SsmloraError, match="except under protocol tvt"):
        (root / "MNLI" / "train.tsv").unlink()
        task.check_data_dir(str(root))


def test_label_word_format(shared_data, tokenizer):
    data = TaskDataModule(task=GlueTask("sst2", protocol="tvt"), data_dir=str(shared_data / "glue"),
                          tokenizer=tokenizer, objective="causal_lm", max_length=512,
                          max_eval_samples=8)  # fmt: skip
    assert data.task_info.objective == "lm_label_words"
    assert data.task_info.metrics == ("accuracy", "out_of_class")
    data.setup("validate")
    raw = GlueTask("sst2", protocol="tvt").load_split("validation", str(shared_data / "glue"))
    raw = raw.shuffle(seed=42).select(range(8))  # the data module's max_eval_samples draw
    for row, ex in zip(data.splits["validation"], raw, strict=True):
        text = data.tokenizer.decode(row["input_ids"])
        assert text == f"{PROMPTS['sst2']}###{ex['text_a']}###{ex['label']}<eos>"
        target = data.tokenizer.decode([t for t in row["labels"] if t >= 0])
        assert target == f"{ex['label']}<eos>"  # the loss covers the label word and EOS
        assert row["label"] == ex["label"]


def test_pairs_and_own_label_words(tmp_path, tokenizer):
    root = write_glue(tmp_path, "rte")
    task = GlueTask("rte", label_words=("yes", "no"), instruction="Entailed? ")
    data = TaskDataModule(task=task, data_dir=str(root), tokenizer=tokenizer,
                          objective="causal_lm", max_length=512)  # fmt: skip
    data.setup("validate")
    raw = task.load_split("validation", str(root))
    text = data.tokenizer.decode(data.splits["validation"][0]["input_ids"])
    word = ("yes", "no")[raw[0]["label"]]
    assert text == f"Entailed? ###{raw[0]['text_a']}###{raw[0]['text_b']}###{word}<eos>"
    assert data.task_info.metric_options["label_names"] == ["entailment", "not_entailment"]


def test_refusals(tmp_path, tokenizer):
    root = write_glue(tmp_path, "stsb")
    with pytest.raises(SsmloraError, match=r"supports data\.objective in \['classification'\]"):
        TaskDataModule(task="stsb", data_dir=str(root), tokenizer=tokenizer, objective="causal_lm")
    with pytest.raises(SsmloraError, match="needs 2 distinct words"):
        TaskDataModule(task=GlueTask("sst2", label_words=("a", "a")), tokenizer=tokenizer,
                       objective="causal_lm")  # fmt: skip


def _objective(rule: str, words=("0", "1"), names=None):
    from ssmlora_app.tasks import TaskInfo

    info = TaskInfo(task="cola", num_labels=2, problem_type="single_label_classification",
                    metrics=("mcc", "accuracy", "out_of_class"), eval_splits=("validation",),
                    objective="lm_label_words",
                    metric_options={"label_words": list(words), "label_names": names,
                                    "out_of_class": rule})  # fmt: skip
    return objective_for(info)


@pytest.mark.parametrize("rule", ["wrong", "drop"])
def test_metrics_on_label_words(rule):
    """Answers -> classes (the stripped label word, else out of class) -> the task's metrics:
    accuracy and MCC by hand; an out-of-class answer is wrong, or left out (``drop``)."""
    objective = _objective(rule)
    answers = ["0", " 1", "maybe", "1", "0 ", "1", "10", "0"]
    gold = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1])
    classes = objective.classes(answers)
    assert classes.tolist() == [0, 1, -1, 1, 0, 1, -1, 0]
    metrics = objective.metrics("val")
    metrics.update(classes[:4], gold[:4])  # two batches
    metrics.update(classes[4:], gold[4:])
    got = {k: float(v) for k, v in metrics.compute().items()}
    assert got["val/out_of_class"] == 2 / 8
    if rule == "wrong":  # 8 examples, right: 0, 1, 4, 5
        assert got["val/accuracy"] == 4 / 8
        preds = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])  # out of class -> the other class
    else:  # 6 examples, right: 0, 1, 4, 5
        assert got["val/accuracy"] == pytest.approx(4 / 6)
        keep = classes >= 0
        preds, gold = classes[keep], gold[keep]
    tp = int(((preds == 1) & (gold == 1)).sum())
    tn = int(((preds == 0) & (gold == 0)).sum())
    fp = int(((preds == 1) & (gold == 0)).sum())
    fn = int(((preds == 0) & (gold == 1)).sum())
    mcc = (tp * tn - fp * fn) / ((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    assert got["val/mcc"] == pytest.approx(mcc, abs=1e-6)
    assert float(MatthewsCorrCoef(task="binary")(preds, gold)) == pytest.approx(mcc, abs=1e-6)


def test_predict_records_name_the_class_or_keep_the_answer():
    objective = _objective("wrong", words=("yes", "no"), names=["entailment", "not_entailment"])
    dataset = datasets.Dataset.from_dict({"label": [0, 1, 1]})
    records = objective.records(["no", "yes", "perhaps"], [2, 0, 1], dataset)
    assert records == [
        {"index": 0, "prediction": "entailment", "answer": "yes", "label": "entailment"},
        {"index": 1, "prediction": "perhaps", "answer": "perhaps", "label": "not_entailment"},
        {"index": 2, "prediction": "not_entailment", "answer": "no", "label": "not_entailment"},
    ]
    # an unlabelled test split (a GLUE submission): the file's own indices, no labels
    test = datasets.Dataset.from_dict({"label": [-1, -1], "idx": [7, 3]})
    assert objective.records(["yes", "no"], [0, 1], test) == [
        {"index": 3, "prediction": "not_entailment", "answer": "no"},
        {"index": 7, "prediction": "entailment", "answer": "yes"},
    ]


@pytest.mark.slow
def test_tvt_label_words_fit_then_test_on_the_dev_set(tmp_path, shared_data, tokenizer):
    """fit (train 80%, validate 20%), then ``ssmlora test`` on the official dev split, and
    predict records with the generated answers."""
    fields = ["--data.task=GlueTask", "--data.task.name=sst2", "--data.task.protocol=tvt",
              f"--data.data_dir={shared_data / 'glue'}", "--data.objective=causal_lm",
              "--data.max_length=384", "--data.batch_size=4", "--data.max_train_samples=8",
              "--data.max_eval_samples=6", f"--model.backbone.config={json.dumps(TINY_LLAMA)}",
              f"--model.backbone.tokenizer={tokenizer}",
              "--model.adapter.class_path=ssmlora_app.adapters.LoRAConfig",
              "--model.adapter.init_args.target_modules=[q_proj, v_proj]",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=t",
              "--trainer.logger.init_args.version=v", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false"]  # fmt: skip
    main(["fit", *fields, "--trainer.max_steps=2"])
    ckpt = tmp_path / "t" / "v" / "checkpoints" / "last.ckpt"
    main(["test", *fields, f"--ckpt_path={ckpt}"])
    main(["predict", *fields, f"--ckpt_path={ckpt}", f"--predictions.output_dir={tmp_path / 'p'}",
          "--data.predict_splits=test"])  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "p" / "sst2_test.jsonl").read_text().splitlines()]  # fmt: skip
    dev = GlueTask("sst2").load_split("validation", str(shared_data / "glue"))
    assert len(records) == 6 and {r["label"] for r in records} <= {0, 1}
    drawn = dev.shuffle(seed=42).select(range(6))["label"]
    assert [r["label"] for r in records] == list(drawn)  # the dev set, as test
    assert all("answer" in r for r in records)
    assert (tmp_path / "p" / "SST-2_test.tsv").is_file()
