"""Extractive QA runs through the CLI: a tiny SQuAD v2.0 fit whose logged scores equal the
official scores of the files ``ssmlora predict`` writes; a two-process DDP fit that gathers the
windows (and the questions' texts) to the scores of one process."""

import json
import os
import subprocess
import sys

import pytest

from ssmlora_app.cli import main
from ssmlora_app.scoring.squad import answers_from_squad, score_v2
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "data" / "squad_v2_task"
CONFIG = REPO / "configs" / "tiny" / "bert_squad_v2_lora.yaml"
V2_KEYS = ("f1", "exact", "HasAns_f1", "HasAns_exact", "NoAns_f1", "NoAns_exact", "best_f1",
           "best_exact")  # fmt: skip


def _common(tmp_path) -> list[str]:
    """The tiny config; its random model would abstain everywhere at the default threshold, so
    a high one makes it answer (the text path: windows, offsets, contexts)."""
    return ["--config", str(CONFIG), f"--data.data_dir={FIXTURE}",
            "--data.task.null_score_diff_threshold=100.0",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=t",
            "--trainer.logger.init_args.version=v", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]  # fmt: skip


@pytest.mark.slow
def test_a_tiny_squad_v2_fit_logs_the_official_scores_of_the_files_predict_writes(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("METRICS_JSON", str(tmp_path / "metrics.json"))
    common = _common(tmp_path)
    main(["fit", *common, "--trainer.callbacks+=tests.metrics_dump.DumpMetrics"])
    logged = json.loads((tmp_path / "metrics.json").read_text())
    run = tmp_path / "t" / "v"
    main(["predict", *common, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
          f"--predictions.output_dir={tmp_path / 'p'}"])  # fmt: skip
    data = json.loads((FIXTURE / "dev-v2.0.json").read_text())["data"]
    answers = answers_from_squad(data)
    predictions = json.loads((tmp_path / "p" / "squad_v2_validation_predictions.json").read_text())
    na_probs = json.loads((tmp_path / "p" / "squad_v2_validation_na_prob.json").read_text())
    assert predictions.keys() == na_probs.keys() == answers.keys()
    assert all(0 < p < 1 for p in na_probs.values()) and all(predictions.values())
    assert all(text == "" or text in _context(data, qid) for qid, text in predictions.items())
    official = score_v2(answers, predictions, na_probs)
    # The metric (windows gathered over the split at the epoch's end) and predict's files (the
    # same post-processing from the records) give the official scores of one set of answers.
    for key in V2_KEYS:
        assert logged[f"val/{key}"] == pytest.approx(official[key] / 100, abs=1e-6), key
    records = [json.loads(line) for line in
               (tmp_path / "p" / "squad_v2_validation.jsonl").read_text().splitlines()]  # fmt: skip
    assert [r["index"] for r in records] == list(range(len(answers)))
    assert {r["id"]: r["prediction"] for r in records} == predictions
    assert {r["id"]: r["references"] for r in records} == answers
    tsv = (tmp_path / "p" / "squad_v2.tsv").read_text().splitlines()
    assert tsv[0] == "index\tprediction" and len(tsv) == len(answers) + 1


def _context(data: list[dict], qid: str) -> str:
    for article in data:
        for paragraph in article["paragraphs"]:
            if any(qa["id"] == qid for qa in paragraph["qas"]):
                return paragraph["context"]
    raise KeyError(qid)


def _fit(tmp_path, name: str, *extra: str) -> dict:
    """A tiny SQuAD v2.0 fit without dropout in a subprocess (so DDP can start the others)."""
    metrics = tmp_path / f"{name}.json"
    args = ["fit", *_common(tmp_path / name), "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path / name}",
            "--model.backbone.dropout=false",
            "--trainer.callbacks+=tests.metrics_dump.DumpMetrics", *extra]  # fmt: skip
    env = dict(os.environ, METRICS_JSON=str(metrics))
    result = subprocess.run([sys.executable, "-m", "tests.metrics_dump", *args], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(metrics.read_text())


@pytest.mark.slow
def test_two_process_ddp_gives_the_scores_of_one_process(tmp_path):
    """Each rank evaluates every other window; the scores gather all of them (and the texts of
    their questions) before the post-processing, so they equal one process's."""
    single = _fit(tmp_path, "single", "--data.batch_size=8")
    ddp = _fit(tmp_path, "ddp", "--data.batch_size=4", "--trainer.strategy=ddp",
               "--trainer.devices=2")  # fmt: skip
    assert single.keys() == ddp.keys() and "val/HasAns_f1" in single
    assert single["val/NoAns_f1"] == 0  # every question answered with a span of its context
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-4), key
