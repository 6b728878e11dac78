"""`ssmlora fit` + `ssmlora validate` offline on a tiny Llama, one task of each family."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from ssmlora_app.adapters import load_adapter
from ssmlora_app.backbone import BackboneConfig, build_causal_lm, generation_tokens
from ssmlora_app.cli import build_cli, main
from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.objectives.lm_data import IGNORE
from ssmlora_app.tasks import WordProblemTask
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny"


class SaveMetrics(L.Callback):
    """Writes the validation metrics to a JSON file when validation ends."""

    def __init__(self, path: str):
        self.path = path

    def on_validation_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        Path(self.path).write_text(json.dumps(metrics))


def run(tmp_path, config: str, *extra: str) -> dict:
    """Fit briefly, then validate the last checkpoint; returns the validate metrics, and
    ``trained``: the data module of these settings and the trained model rebuilt by hand
    (the config's backbone + the run's adapter folder), for checking the metrics apart."""
    out = tmp_path / "metrics.json"
    callback = {"class_path": "tests.test_tasks_cli.SaveMetrics", "init_args": {"path": str(out)}}
    common = [
        "--config",
        str(TINY / config),
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.version=v",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.callbacks+={json.dumps(callback)}",
        *extra,
    ]
    main(["fit", *common])
    ckpt = next(tmp_path.glob("*/v/checkpoints/last.ckpt"))
    assert torch.load(ckpt, weights_only=True)["state_dict"], "no adapter tensors saved"
    out.unlink()
    main(["validate", *common, f"--ckpt_path={ckpt}"])
    data = build_cli(common, run=False).datamodule
    data.setup("validate")
    config = yaml.safe_load((TINY / config).read_text())
    tok = data.tokenizer
    model = build_causal_lm(BackboneConfig(config=config["model"]["backbone"]["config"]),
                            len(tok), tok.pad_token_id, generation_tokens(tok))  # fmt: skip
    model = load_adapter(model, ckpt.parent.parent / "adapter").eval()
    return {**json.loads(out.read_text()), "trained": (data, model)}


def token_accuracy(model, rows) -> float:
    """Teacher-forced arg-max accuracy over the target tokens of encoded rows, one row at a time."""
    correct = total = 0
    for row in rows:
        with torch.no_grad():
            predicted = model(torch.tensor([row["input_ids"]])).logits[0].argmax(-1)
        for i, label in enumerate(row["labels"]):
            if label != IGNORE:
                correct += int(predicted[i - 1] == label)
                total += 1
    return correct / total


def chosen_options(model, rows) -> list[int]:
    """Per encoded row: the option with the highest summed log-likelihood of its tokens."""
    chosen = []
    for row in rows:
        scores = []
        for ids, labels in zip(row["choice_input_ids"], row["choice_labels"], strict=True):
            with torch.no_grad():
                logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            scored = [(i, t) for i, t in enumerate(labels[1:]) if t != IGNORE]
            scores.append(sum(logp[i, t].item() for i, t in scored))
        chosen.append(max(range(len(scores)), key=scores.__getitem__))
    return chosen


def check_choice_accuracy(metrics: dict) -> None:
    """The logged accuracy is the share of examples whose best-scored option is the gold one."""
    data, model = metrics["trained"]
    rows = list(data.splits["validation"])
    chosen = chosen_options(model, rows)
    expected = sum(c == r["label"] for c, r in zip(chosen, rows, strict=True)) / len(rows)
    assert metrics["val/accuracy"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_dfa_state_tracking_fit_validate_at_longer_lengths(tmp_path):
    fields = ["--data.task.train_length=8", "--data.task.eval_lengths=[16]",
              "--data.task.train_size=192", "--data.task.eval_size=32"]  # fmt: skip
    metrics = run(tmp_path, "llama_dfa_hrm.yaml", *fields, "--trainer.max_epochs=1")
    assert {"val/token_accuracy", "val_len16/token_accuracy", "val/loss"} <= metrics.keys()
    data, model = metrics["trained"]
    for split, prefix in (("validation", "val"), ("validation_len16", "val_len16")):
        expected = token_accuracy(model, data.splits[split])
        assert metrics[f"{prefix}/token_accuracy"] == pytest.approx(expected, abs=1e-6), split


@pytest.mark.slow
def test_quality_multiple_choice_fit_validate(shared_data, tmp_path):
    leval = shared_data / "longctx" / "leval"
    metrics = run(
        tmp_path,
        "llama_quality_lora.yaml",
        f"--data.data_dir={leval}",
        "--data.max_length=1000",
        "--data.max_train_samples=4",
        "--data.max_eval_samples=3",
    )
    assert metrics["val/loss"] > 0
    check_choice_accuracy(metrics)


@pytest.mark.slow
def test_qmsum_generation_fit_validate(shared_data, tmp_path):
    leval = shared_data / "longctx" / "leval"
    metrics = run(
        tmp_path,
        "llama_qmsum_hrm.yaml",
        f"--data.data_dir={leval}",
        "--data.max_length=256",
        "--data.max_train_samples=4",
        "--data.max_eval_samples=2",
        "--data.max_new_tokens=12",
    )
    assert {"val/rouge1", "val/rouge2", "val/rougeL"} <= metrics.keys()


@pytest.mark.slow
def test_superglue_causal_lm_fit_validate(tmp_path):
    rows = [
        {"question": f"is it {w}", "passage": f"It is {w}. " * 3, "label": i % 2 == 0, "idx": i}
        for i, w in enumerate(["red", "blue", "green", "big", "small", "old"] * 2)
    ]
    folder = tmp_path / "data" / "BoolQ"
    folder.mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = run(
        tmp_path,
        "llama_quality_lora.yaml",
        "--data.task=boolq",
        f"--data.data_dir={tmp_path / 'data'}",
        "--data.max_length=256",
    )
    check_choice_accuracy(metrics)


@pytest.mark.slow
def test_byte_lm_fit_validate_reports_bits_per_byte(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    metrics = run(
        tmp_path,
        "llama_bytes_hrm.yaml",
        f"--data.data_dir={corpus}",
        "--data.task.window=128",
        "--data.max_length=128",
        "--model.optimizer.init_args.lr=0.03",
    )
    # a random model is near 8 bits per byte; a little training on a repetitive text goes below
    assert 0 < metrics["val/bits_per_byte"] < 8.0
    assert metrics["val/bits_per_byte"] == pytest.approx(metrics["val/loss"] / 0.6931472, rel=1e-3)


# ssmlora predict on causal-LM tasks: option indices (choice), generated text (teacher forced).
def predict(tmp_path, config: str, *extra: str) -> Path:
    """Predict with the config's untrained adapter; returns the predictions folder."""
    out = tmp_path / "preds"
    main(
        [
            "predict",
            "--config",
            str(TINY / config),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            f"--predictions.output_dir={out}",
            "--allow_untrained=true",
            *extra,
        ]
    )
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_predict_choice_task_writes_the_chosen_option_index(tmp_path):
    words = ["rain", "sun", "wind", "snow", "fog", "heat"]
    rows = [
        {"premise": f"The {w} came.", "choice1": "It" + " was" * (i % 3), "question": "effect",
         "choice2": "It" + " is" * (2 - i % 3), "label": i % 2, "idx": i}
        for i, w in enumerate(words)
    ]  # fmt: skip
    folder = tmp_path / "data" / "COPA"
    folder.mkdir(parents=True)
    for name in ("train.jsonl", "val.jsonl"):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = ["--data.task=copa", f"--data.data_dir={tmp_path / 'data'}", "--data.max_length=64"]
    preds = read_jsonl(
        predict(tmp_path, "llama_quality_lora.yaml", *data) / "copa_validation.jsonl"
    )
    assert [p["index"] for p in preds] == list(range(6))
    assert [p["label"] for p in preds] == [r["label"] for r in rows]
    # The option with the highest log-likelihood under the backbone (LoRA's B = 0 untrained).
    config = yaml.safe_load((TINY / "llama_quality_lora.yaml").read_text())
    dm = TaskDataModule(task="copa", data_dir=str(tmp_path / "data"), objective="causal_lm",
                        max_length=64)  # fmt: skip
    dm.setup("predict")
    backbone = BackboneConfig(config=config["model"]["backbone"]["config"])
    model = build_causal_lm(
        backbone, len(dm.tokenizer), dm.tokenizer.pad_token_id, generation_tokens(dm.tokenizer)
    ).eval()
    expected = chosen_options(model, dm.splits["validation"])
    assert [p["prediction"] for p in preds] == expected
    assert set(expected) == {0, 1}


@pytest.mark.slow
def test_predict_teacher_forced_task_writes_as_many_tokens_as_the_target(tmp_path):
    """A word problem: no references and max_new_tokens 0, so each answer is as long as its
    target (the running products); one file per evaluation split."""
    args = {"train_length": 6, "eval_lengths": [10], "train_size": 8, "eval_size": 4}
    fields = [f"--data.task.{k}={json.dumps(v)}" for k, v in args.items()]  # typed from text
    out = predict(tmp_path, "llama_quality_lora.yaml", "--data.task=WordProblemTask", *fields,
                  "--data.max_length=32")  # fmt: skip
    task = WordProblemTask(**args)
    tokenizer = task.builtin_tokenizer()
    config = yaml.safe_load((TINY / "llama_quality_lora.yaml").read_text())
    backbone = BackboneConfig(config=config["model"]["backbone"]["config"])
    model = build_causal_lm(
        backbone, len(tokenizer), tokenizer.pad_token_id, generation_tokens(tokenizer)
    ).eval()
    for split in ("validation", "validation_len10"):
        examples = task.examples(split)
        preds = read_jsonl(out / f"word_problem_{split}.jsonl")
        assert [p["label"] for p in preds] == [" ".join(t) for _, t, _ in examples]
        expected = []  # the backbone's greedy answer (LoRA's B = 0 untrained), target-long
        for prompt, target, _ in examples:
            ids = torch.tensor([tokenizer(" ".join(prompt))["input_ids"]])
            with torch.no_grad():
                generated = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=len(target),
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            expected.append(
                tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
            )
        assert [p["prediction"] for p in preds] == expected
        assert [len(p.split()) for p in expected] == [len(t) for _, t, _ in examples]
        tsv = (
            out / ("word_problem.tsv" if split == "validation" else f"word_problem_{split}.tsv")
        ).read_text()
        assert tsv.splitlines()[1:] == [f"{p['index']}\t{p['prediction']}" for p in preds]
