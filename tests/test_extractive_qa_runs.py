"""Extractive QA runs: a tiny SQuAD v2.0 fit through the CLI whose logged scores equal the
official scores of the files ``ssmlora predict`` writes; the metric in two DDP processes (gloo)
gathers the windows (and the questions' texts) to the scores of one process."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from ssmlora_app.objectives.span_answers import SquadScore
from ssmlora_app.run import RunFolder
from ssmlora_app.scoring.squad import answers_from_squad, score_v2
from ssmlora_app.tools.report.results import read_run
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
    from ssmlora_app.cli import main  # here: the DDP test's processes import this module

    monkeypatch.setenv("METRICS_JSON", str(tmp_path / "metrics.json"))
    common = _common(tmp_path)
    main(
        [
            "fit",
            *common,
            "--trainer.max_epochs=1",
            "--trainer.callbacks+=tests.metrics_dump.DumpMetrics",
        ]
    )
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
    # A run folder written before the post-processing options moved from ``eval_options`` into
    # ``metric_options`` still reports and predicts the same.
    _to_the_old_layout(run)
    result = read_run(RunFolder(run))
    assert result.task == "squad_v2" and result.best == pytest.approx(logged["val/f1"], abs=1e-6)
    assert RunFolder(run).record().task_info.metric_options["version_2"] is True
    main(["predict", *common, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
          f"--predictions.output_dir={tmp_path / 'old'}"])  # fmt: skip
    for name in ("squad_v2_validation_predictions.json", "squad_v2_validation_na_prob.json"):
        assert (tmp_path / "old" / name).read_text() == (tmp_path / "p" / name).read_text()


def _to_the_old_layout(run: Path) -> None:
    """Rewrite the run's hparams.yaml and checkpoint as the version with ``TaskInfo.eval_options``
    wrote them (SQuAD's options there, no ``metric_options``)."""
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for info in (hparams["task_info"], ckpt["ssmlora_hparams"]["task_info"]):
        info["eval_options"] = info.pop("metric_options")
        assert info["eval_options"]["version_2"] is True
    (run / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")


def _context(data: list[dict], qid: str) -> str:
    for article in data:
        for paragraph in article["paragraphs"]:
            if any(qa["id"] == qid for qa in paragraph["qas"]):
                return paragraph["context"]
    raise KeyError(qid)


KEYS = {False: ("exact_match", "f1"), True: ("exact", "f1", "HasAns_f1", "best_f1")}


def _rank_scores(rank: int, store: str, out: str) -> None:
    """One of two gloo processes: the metric over every other window of the split (as a
    DistributedSampler deals them), computed with its DDP sync; the values to ``out``."""
    import torch.distributed as dist

    from tests.test_extractive_qa import _metric_inputs

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    spans, feature, example, questions, _ = _metric_inputs(0)
    mine = torch.arange(rank, len(feature), 2)
    part = type(spans)(**{n: getattr(spans, n)[mine] for n in vars(spans)})
    scores = {}
    for version_2, keys in KEYS.items():
        for key in keys:
            metric = SquadScore(key, version_2)
            metric.update(part, feature[mine], example[mine], [questions[i] for i in mine])
            scores[f"{version_2}/{key}"] = float(metric.compute())
    Path(out.format(rank=rank)).write_text(json.dumps(scores))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_gives_the_scores_of_one_process(tmp_path):
    """Each rank evaluates every other window, so a question's windows are split across the
    ranks; the scores gather all of them (and the texts of their questions) before the
    post-processing, so they equal one process's."""
    from tests.test_extractive_qa import _metric_inputs

    spans, feature, example, questions, _ = _metric_inputs(0)
    halves = [set(example[r::2].tolist()) for r in range(2)]
    assert halves[0] & halves[1]  # questions with windows on both ranks
    single = {}
    for version_2, keys in KEYS.items():
        for key in keys:
            metric = SquadScore(key, version_2)
            metric.update(spans, feature, example, questions)
            single[f"{version_2}/{key}"] = float(metric.compute())
    out = str(tmp_path / "rank{rank}.json")
    torch.multiprocessing.spawn(_rank_scores, args=(str(tmp_path / "store"), out), nprocs=2)
    for rank in range(2):
        ddp = json.loads(Path(out.format(rank=rank)).read_text())
        assert ddp == pytest.approx(single, abs=1e-6), rank
