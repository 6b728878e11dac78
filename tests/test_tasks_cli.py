"""`ssmlora fit` + `ssmlora validate` offline on a tiny Llama, one task of each family."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from ssmlora_app.cli import main
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
    """Fit briefly, then validate the last checkpoint; returns the validate metrics."""
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
    return json.loads(out.read_text())


def test_dfa_state_tracking_fit_validate_at_longer_lengths(tmp_path):
    args = json.dumps({"train_length": 8, "eval_lengths": [16], "train_size": 192, "eval_size": 32})
    metrics = run(
        tmp_path, "llama_dfa_hrm.yaml", f"--data.task_args={args}", "--trainer.max_epochs=1"
    )
    assert {"val/token_accuracy", "val_len16/token_accuracy", "val/loss"} <= metrics.keys()
    assert all(0 <= metrics[k] <= 1 for k in metrics if k.endswith("accuracy"))


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
    assert 0 <= metrics["val/accuracy"] <= 1 and metrics["val/loss"] > 0


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
    assert 0 <= metrics["val/accuracy"] <= 1


def test_byte_lm_fit_validate_reports_bits_per_byte(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    metrics = run(
        tmp_path,
        "llama_bytes_hrm.yaml",
        f"--data.data_dir={corpus}",
        "--data.task_args={window: 128}",
        "--data.max_length=128",
        "--model.optimizer.init_args.lr=0.03",
    )
    # a random model is near 8 bits per byte; a little training on a repetitive text goes below
    assert 0 < metrics["val/bits_per_byte"] < 8.0
    assert metrics["val/bits_per_byte"] == pytest.approx(metrics["val/loss"] / 0.6931472, rel=1e-3)
