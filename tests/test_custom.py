"""The custom task: your own CSV/TSV/JSONL/Parquet files, label mapping, splits, bad input, and
offline fit + predict through the CLI."""

import csv
import json
import random
import re
from collections import Counter

import pandas as pd
import pytest
import torch
import yaml

from ssmlora_app.adapters import load_adapter
from ssmlora_app.backbone import BackboneConfig, build_causal_lm, generation_tokens
from ssmlora_app.cli import main
from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives.lm_data import IGNORE
from ssmlora_app.tasks import CustomTask
from ssmlora_app.tasks.vocab import byte_tokenizer
from tests.conftest import TINY_ROBERTA

ROWS = [
    {"text": 'a "quoted", comma text', "pair": "first pair", "label": "pos"},
    {"text": "tab-free plain words", "pair": "second", "label": "neg"},
    {"text": "ünïcode ✓ text", "pair": "third one", "label": "neutral"},
    {"text": "more words here", "pair": "fourth", "label": "pos"},
]


def write(path, rows, fmt=None):
    """Write ``rows`` (dicts) as CSV, TSV, JSONL or Parquet by the path's suffix."""
    fmt = fmt or path.suffix.lstrip(".")
    if fmt in ("csv", "tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, list(rows[0]), delimiter="\t" if fmt == "tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def load(args: dict, split: str = "train", data_dir=None):
    task = CustomTask(**args)
    task.check_data_dir(data_dir)
    return task, task.load_split(split, data_dir)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_each_format_round_trips_to_the_same_examples(tmp_path, fmt):
    write(tmp_path / f"train.{fmt}", ROWS)
    write(tmp_path / f"val.{fmt}", ROWS[:2])
    args = {"train_file": f"train.{fmt}", "validation_file": f"val.{fmt}"}
    args["text_pair_column"] = "pair"
    task, train = load(args, data_dir=str(tmp_path))
    names = task.label_names
    assert names == ("neg", "neutral", "pos")
    got = [(r["text_a"], r["text_b"], names[r["label"]]) for r in train]
    assert got == [(r["text"], r["pair"], r["label"]) for r in ROWS]
    val = task.load_split("validation", str(tmp_path))
    assert [names[r["label"]] for r in val] == ["pos", "neg"]


def test_integer_labels_are_class_ids_in_every_format(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3} for i in range(9)]
    for fmt in ("csv", "jsonl", "parquet"):
        path = str(write(tmp_path / f"i.{fmt}", rows))
        task, ds = load({"train_file": path, "validation_file": path})
        assert task.num_labels == 3 and task.label_names is None
        assert ds["label"] == [r["label"] for r in rows]


def test_string_labels_map_in_a_stable_order(tmp_path):
    rows = [{"text": f"row {i}", "label": ["zebra", "apple", "mango"][i % 3]} for i in range(30)]
    shuffled = random.Random(1).sample(rows, len(rows))
    a, _ = load({"train_file": str(write(tmp_path / "a.csv", rows))})
    b, _ = load({"train_file": str(write(tmp_path / "b.jsonl", shuffled))})
    assert a.label_names == b.label_names == ("apple", "mango", "zebra")
    given = ["zebra", "mango", "apple"]
    c, ds = load({"train_file": str(tmp_path / "a.csv"), "labels": given})
    assert c.label_names == tuple(given) and c.num_labels == 3
    by_text = {r["text"]: r["label"] for r in rows}
    assert all(given[r["label"]] == by_text[r["text_a"]] for r in ds)


def test_the_carved_validation_split_is_stratified_and_seeded(tmp_path):
    rows = [{"text": f"a{i}", "label": "a"} for i in range(60)]
    rows += [{"text": f"b{i}", "label": "b"} for i in range(20)]
    path = str(write(tmp_path / "t.csv", rows))
    args = {"train_file": path, "validation_ratio": 0.25, "seed": 3}
    task, train = load(args)
    val = task.load_split("validation", None)
    assert Counter(val["label"]) == {0: 15, 1: 5}  # 3:1 as in the file
    assert Counter(train["label"]) == {0: 45, 1: 15}
    assert not set(train["text_a"]) & set(val["text_a"])
    _, again = load(args)
    assert again["text_a"] == train["text_a"]
    _, other = load({**args, "seed": 4})
    assert other["text_a"] != train["text_a"]


def test_regression_labels_and_metrics(tmp_path):
    rows = [{"text": f"t{i}", "score": i / 4} for i in range(12)]
    args = {"train_file": str(write(tmp_path / "r.jsonl", rows)), "task_type": "regression"}
    args.update(label_column="score", validation_ratio=0.25)
    task, ds = load(args)
    assert task.is_regression and task.num_labels == 1
    assert task.metrics == ("pearson", "spearman", "mse")
    assert all(r["label"] == pytest.approx(float(r["text_a"][1:]) / 4) for r in ds)
    write(tmp_path / "bad.csv", [{"text": "x", "score": "high"}, {"text": "y", "score": "1"}])
    with pytest.raises(SsmloraError, match="'high', not a number"):
        load({**args, "train_file": str(tmp_path / "bad.csv")})


# Bad input: each a clear error when the data module is built, before training.
def test_a_missing_column_names_the_existing_ones(tmp_path):
    path = str(write(tmp_path / "t.csv", ROWS))
    with pytest.raises(
        SsmloraError, match=r"no text column 'sentence'.*\['text', 'pair', 'label'\]"
    ):
        load({"train_file": path, "text_column": "sentence"})
    with pytest.raises(SsmloraError, match="no label column 'y'"):
        load({"train_file": path, "label_column": "y"})


def test_labels_outside_the_given_list(tmp_path):
    path = str(write(tmp_path / "t.csv", ROWS))
    with pytest.raises(SsmloraError, match=r"labels \['neutral'\] that are not in"):
        load({"train_file": path, "labels": ["neg", "pos"]})


def test_a_validation_label_unseen_in_training(tmp_path):
    train = str(write(tmp_path / "t.csv", ROWS[:2]))
    val = str(write(tmp_path / "v.csv", ROWS[2:3]))
    with pytest.raises(SsmloraError, match=r"\['neutral'\] that are not in the training labels"):
        load({"train_file": train, "validation_file": val})


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_an_empty_file(tmp_path, content):
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(SsmloraError, match=r"empty|no rows"):
        load({"train_file": str(tmp_path / "t.csv")})


def test_mixed_label_types(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "pos"}, {"text": "c", "label": 0}]
    for fmt in ("csv", "jsonl"):
        path = str(write(tmp_path / f"m.{fmt}", rows))
        with pytest.raises(SsmloraError, match=r"mixes numbers .* and strings .*'pos'"):
            load({"train_file": path})
    # Listing every class reads them all as names.
    task, _ = load({"train_file": path, "validation_file": path, "labels": ["0", "1", "pos"]})
    assert task.label_names == ("0", "1", "pos")


def test_a_validation_ratio_that_leaves_a_split_empty(tmp_path):
    path = str(write(tmp_path / "t.csv", ROWS))
    with pytest.raises(SsmloraError, match="leaves the validation split empty"):
        load({"train_file": path, "validation_ratio": 0.05})
    with pytest.raises(SsmloraError, match="strictly between 0 and 1"):
        load({"train_file": path, "validation_ratio": 1.0})


def test_null_texts_are_counted_and_can_be_dropped(tmp_path):
    rows = [{"text": f"t{i}" if i % 4 else "", "label": i % 2} for i in range(20)]
    path = str(write(tmp_path / "t.csv", rows))
    with pytest.raises(
        SsmloraError, match=r"5 rows with an empty/null text .*drop_null_text: true"
    ):
        load({"train_file": path})
    task, train = load({"train_file": path, "drop_null_text": True, "validation_ratio": 0.2})
    val = task.load_split("validation", None)
    assert len(train) + len(val) == 15 and "" not in train["text_a"]


def test_no_train_file_and_bad_task_args_are_named():
    with pytest.raises(SsmloraError, match="train_file"):
        TaskDataModule(task=CustomTask(text_column="x"))
    with pytest.raises(SsmloraError, match="task_type='ner'"):
        CustomTask(task_type="ner")
    with pytest.raises(SsmloraError, match=r"data.task: \{class_path: ssmlora_app.tasks.custom"):
        TaskDataModule(task="custom", task_args={"text_column": "x"})  # the removed form


# Causal LM: prompt/completion rows.
LM_ROWS = [{"prompt": f"Q: {i}+1?\nA:", "completion": f" {i + 1}"} for i in range(12)]


def test_prompt_completion_loss_on_the_completion_only(tmp_path):
    path = str(write(tmp_path / "sft.jsonl", LM_ROWS))
    args = {"train_file": path, "task_type": "causal_lm", "validation_ratio": 0.25}
    dm = TaskDataModule(task=CustomTask(**args), objective="causal_lm", max_length=64)
    assert dm.task_info.metrics == ("token_accuracy", "sequence_accuracy")
    assert dm.task_info.max_new_tokens == 64  # the length of the answers predict writes
    dm.setup("fit")
    tok = dm.tokenizer
    row = dm.splits["train"][0]
    target = [t for t in row["labels"] if t != IGNORE]
    original = {r["prompt"]: r["completion"] for r in LM_ROWS}
    prompt = tok.decode(row["input_ids"][: len(row["input_ids"]) - len(target)])
    assert target[-1] == tok.eos_token_id  # the model learns to stop
    assert tok.decode(target[:-1]) == original[prompt]
    # Predict batches bring the prompts to generate from; validation batches stay as they were.
    batch = next(iter(dm.predict_dataloader()[0]))
    val = next(iter(dm.val_dataloader()[0]))
    assert val.prompts is None and val.choices is None and val.references is None
    assert torch.equal(batch.input_ids, val.input_ids)
    prompts = batch.prompts
    for i, length in enumerate(prompts.lengths.tolist()):
        prompt = tok.decode(prompts.ids[i, :length])
        target = batch.input_ids[i, length : length + prompts.target_lengths[i]]
        assert tok.decode(target, skip_special_tokens=True) == original[prompt]


def test_the_chat_template_wraps_the_prompt(tmp_path):
    path = str(write(tmp_path / "sft.csv", LM_ROWS))
    args = {"train_file": path, "task_type": "causal_lm", "chat_template": True}
    args.update(system_prompt="Be brief.", validation_ratio=0.25)
    task = CustomTask(**args)
    task.check_data_dir(None)
    ds = task.load_lm_split("train", None)
    tok = task.builtin_tokenizer()
    with pytest.raises(SsmloraError, match="no chat template"):
        task.render_lm(ds, tok)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    out = task.render_lm(ds, tok)
    assert out[0]["prompt"] == f"<|system|>Be brief.\n<|user|>{ds[0]['prompt']}\n<|assistant|>"
    assert out[0]["target"] == ds[0]["target"]


def test_prompt_column_mapping_errors(tmp_path):
    path = str(write(tmp_path / "sft.jsonl", LM_ROWS))
    with pytest.raises(
        SsmloraError, match=r"no prompt column 'instruction'.*\['prompt', 'completion'\]"
    ):
        load({"train_file": path, "task_type": "causal_lm", "prompt_column": "instruction"})


# Offline runs through the CLI.
def custom(fields: dict) -> dict:
    """``data.task`` as the custom task's class with its fields."""
    return {"class_path": "ssmlora_app.tasks.CustomTask", "init_args": fields}


def _config(tmp_path, data: dict, backbone: dict, adapter: dict | None = None) -> str:
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "c"}}},
        "model": {"backbone": {"config": backbone},
                  "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}},
        "data": data,
    }  # fmt: skip
    if adapter:
        config["model"]["adapter"] = adapter
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_fit_then_predict_writes_the_original_label_strings(tmp_path, caplog):
    caplog.set_level("INFO")
    rows = [{"text": f"good {i}", "label": "positive"} for i in range(10)]
    rows += [{"text": f"bad {i}", "label": "negative"} for i in range(10)]
    write(tmp_path / "reviews.csv", random.Random(0).sample(rows, 20))
    data = {"task": custom({"train_file": "reviews.csv", "validation_ratio": 0.3, "mcc": True}),
            "data_dir": str(tmp_path), "max_length": 16, "batch_size": 4}  # fmt: skip
    backbone = {k: v for k, v in TINY_ROBERTA.items() if k not in ("vocab_size", "pad_token_id")}
    backbone["max_position_embeddings"] = 300  # RoBERTa positions start after the pad id (257)
    config = _config(tmp_path, data, backbone)
    main(["fit", "--config", config])
    for name in ("val/accuracy", "val/macro_f1", "val/mcc"):
        assert f"{name} = " in caplog.text
    run = tmp_path / "runs" / "c" / "version_0"
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["ssmlora"]["label_names"] == ["negative", "positive"]
    out = tmp_path / "preds"
    main(["predict", "--config", str(run / "config.yaml"),
          "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
          f"--predictions.output_dir={out}"])  # fmt: skip
    preds = [
        json.loads(line) for line in (out / "custom_validation.jsonl").read_text().splitlines()
    ]
    assert len(preds) == 6  # 30% of each class
    assert {p["prediction"] for p in preds} <= {"negative", "positive"}
    assert Counter(p["label"] for p in preds) == {"negative": 3, "positive": 3}
    # The checkpoint remembers its classes: data that maps them otherwise is refused.
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(run / "config.yaml"),
              "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
              "--data.task.labels=[positive, negative]", f"--predictions.output_dir={out}"])  # fmt: skip


TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64}  # fmt: skip
LORA = {"class_path": "ssmlora_app.adapters.LoRAConfig",
        "init_args": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}  # fmt: skip


@pytest.mark.slow
def test_fit_on_a_prompt_completion_jsonl(tmp_path, caplog):
    caplog.set_level("INFO")
    write(tmp_path / "sft.jsonl", LM_ROWS)
    data = {"task": custom({"train_file": str(tmp_path / "sft.jsonl"), "task_type": "causal_lm",
                            "validation_ratio": 0.25}),
            "objective": "causal_lm", "max_length": 32, "batch_size": 4}  # fmt: skip
    main(["fit", "--config", _config(tmp_path, data, TINY_LLAMA, LORA), "--trainer.max_epochs=1"])
    assert "val/token_accuracy = " in caplog.text
    assert (tmp_path / "runs" / "c" / "version_0" / "adapter" / "adapter_config.json").is_file()


# Predictions of prompt/completion tasks: the greedy answer as text, next to the reference.
def _greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """What ``model.generate`` (greedy) writes after ``[bos] prompt``, decoded."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = torch.tensor([bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _predict(config: str, out, *extra: str) -> list[dict]:
    main(["predict", "--config", config, f"--predictions.output_dir={out}", *extra])
    return [json.loads(line) for line in (out / "custom_validation.jsonl").open()]


def _validation_rows(args: dict) -> list[dict]:
    task = CustomTask(**args)
    task.check_data_dir(None)
    return list(task.load_lm_split("validation", None))


@pytest.mark.slow
def test_predict_writes_the_greedy_completion_of_a_teacher_forced_sft_run(tmp_path):
    write(tmp_path / "sft.jsonl", LM_ROWS)
    args = {
        "train_file": str(tmp_path / "sft.jsonl"),
        "task_type": "causal_lm",
        "validation_ratio": 0.25,
    }  # fmt: skip  (lm_eval: teacher_forced, the default)
    data = {"task": custom(args), "objective": "causal_lm", "max_length": 32, "batch_size": 4,
            "eval_batch_size": 2}  # fmt: skip
    config = _config(tmp_path, data, TINY_LLAMA, LORA)
    main(["fit", "--config", config, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
          "--model.optimizer.init_args.lr=0.1"])  # fmt: skip
    run = tmp_path / "runs" / "c" / "version_0"
    ckpt = f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    # The trained model, rebuilt by hand: the seeded config backbone + the exported adapter.
    tokenizer = byte_tokenizer()
    backbone = BackboneConfig(config=TINY_LLAMA)
    model = build_causal_lm(
        backbone, len(tokenizer), tokenizer.pad_token_id, generation_tokens(tokenizer)
    )
    model = load_adapter(model, run / "adapter").eval()
    plain = build_causal_lm(
        backbone, len(tokenizer), tokenizer.pad_token_id, generation_tokens(tokenizer)
    ).eval()
    rows = _validation_rows(args)
    assert len(rows) == 3

    preds = _predict(config, tmp_path / "p8", ckpt, "--data.max_new_tokens=8")
    assert [p["index"] for p in preds] == [0, 1, 2]
    assert [p["label"] for p in preds] == [r["target"].strip() for r in rows]
    expected = [_greedy_answer(model, tokenizer, r["prompt"], 8) for r in rows]
    assert [p["prediction"] for p in preds] == expected
    # The adapter is what answers (the bare backbone writes something else).
    assert expected != [_greedy_answer(plain, tokenizer, r["prompt"], 8) for r in rows]

    # The default max_new_tokens (64) is kept within data.max_length, prompt included: a
    # 16-token limit leaves 16 - len(prompt) tokens (one byte each, no BOS).
    preds = _predict(config, tmp_path / "p16", ckpt, "--data.max_length=16")
    expected = [_greedy_answer(model, tokenizer, r["prompt"], 16 - len(r["prompt"])) for r in rows]
    assert [p["prediction"] for p in preds] == expected
    assert expected != [_greedy_answer(model, tokenizer, r["prompt"], 8) for r in rows]


@pytest.mark.slow
def test_predict_writes_answers_of_a_generate_task_with_escaped_tsv(tmp_path):
    rows = [{"prompt": f"Say {w}:\t", "completion": f" {w}\tand\nmore"} for w in "abcdefgh"]
    write(tmp_path / "gen.jsonl", rows)
    args = {"train_file": str(tmp_path / "gen.jsonl"), "task_type": "causal_lm",
            "validation_ratio": 0.25, "lm_eval": "generate", "max_new_tokens": 24}  # fmt: skip
    data = {"task": custom(args), "objective": "causal_lm", "max_length": 64, "batch_size": 4,
            "eval_batch_size": 2}  # fmt: skip
    config = _config(tmp_path, data, TINY_LLAMA, LORA)
    out = tmp_path / "preds"
    preds = _predict(config, out, "--allow_untrained=true")  # LoRA's B = 0: the backbone answers
    tokenizer = byte_tokenizer()
    backbone = BackboneConfig(config=TINY_LLAMA)
    plain = build_causal_lm(
        backbone, len(tokenizer), tokenizer.pad_token_id, generation_tokens(tokenizer)
    ).eval()
    validation = _validation_rows(args)
    assert [p["label"] for p in preds] == [r["target"].strip() for r in validation]
    expected = [_greedy_answer(plain, tokenizer, r["prompt"], 24) for r in validation]
    assert [p["prediction"] for p in preds] == expected
    assert any("\n" in p for p in expected)  # the random model writes line breaks
    # One line per example in the TSV: tabs, line breaks and backslashes escaped.
    lines = (out / "custom.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "index\tprediction" and lines[-1] == "" and len(lines) == len(preds) + 2
    unescape = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
    for line, pred in zip(lines[1:-1], preds, strict=True):
        index, cell = line.split("\t")
        text = re.sub(r"\\[\\tnr]", lambda m: unescape[m.group(0)], cell)
        assert (int(index), text) == (pred["index"], pred["prediction"])


def test_a_dataset_through_load_dataset_with_split_names_and_class_names(tmp_path):
    """The ``hub_id`` path, offline: ``datasets.load_dataset`` on a local folder of Parquet files
    (a ``ClassLabel`` column brings its names, in its own order)."""
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "y": datasets.ClassLabel(names=["spam", "ham"])}
    )
    folder = tmp_path / "hub"
    folder.mkdir()
    for split, n in (("train", 8), ("validation", 4)):
        rows = {"sentence": [f"{split} {i}" for i in range(n)], "y": [i % 2 for i in range(n)]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(folder / f"{split}.parquet")
    args = {"hub_id": str(folder), "validation_split": "validation"}
    args.update(text_column="sentence", label_column="y")
    task, train = load(args)
    assert task.label_names == ("spam", "ham")
    assert train["text_a"] == [f"train {i}" for i in range(8)]
    assert train["label"] == [i % 2 for i in range(8)]
    assert len(task.load_split("validation", None)) == 4
