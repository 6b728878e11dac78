"""ssmlora report: runs (tasks × adapters × seeds) read from TensorBoard event files into the
paper-layout table, CSV/LaTeX, and plots."""

import csv
import statistics

import pytest
import yaml
from lightning.pytorch.core.saving import save_hparams_to_yaml
from torch.utils.tensorboard import SummaryWriter

from ssmlora_app.cli import main
from ssmlora_app.errors import SsmloraError
from ssmlora_app.run import RunFolder
from ssmlora_app.tools.report import build_report, read_run

TASKS = {  # task -> (headline tag, metrics, eval splits)
    "cola": ("val/mcc", ("mcc", "accuracy"), ("validation",)),
    "mnli": (
        "val_matched/accuracy",
        ("accuracy",),
        ("validation_matched", "validation_mismatched"),
    ),
}
ADAPTERS = {
    "lora8": ({"adapter_type": "lora", "r": 8, "alpha": 16.0}, 1000),
    "lora2": ({"adapter_type": "lora", "r": 2, "alpha": 4.0}, 250),
}


def curve(task: str, adapter: str, seed: int) -> list[float]:
    """Validation values of one fake run, different for every (task, adapter, seed)."""
    base = 0.5 + 0.1 * list(TASKS).index(task) + 0.05 * list(ADAPTERS).index(adapter)
    return [
        base + 0.01 * seed * (epoch % 2) + 0.02 * epoch - 0.03 * (epoch == 3) for epoch in range(4)
    ]


def fake_run(root, task: str, adapter: str, seed: int):
    """A run folder as `ssmlora fit` writes it: events, hparams.yaml (with tuples), config.yaml."""
    tag, metrics, splits = TASKS[task]
    config, params = ADAPTERS[adapter]
    run = root / f"{task}_{adapter}" / f"version_{seed}"
    run.mkdir(parents=True)
    with SummaryWriter(str(run)) as writer:
        for epoch, value in enumerate(curve(task, adapter, seed)):
            step = 10 * (epoch + 1) - 1
            writer.add_scalar("train/loss", 1.0 / (epoch + 1), step)
            writer.add_scalar(tag, value, step)
            writer.add_scalar("epoch", float(epoch), step)
    info = {"task": task, "num_labels": 3, "metrics": metrics, "eval_splits": splits,
            "problem_type": "single_label_classification"}  # fmt: skip
    hparams = {"backbone": {"name_or_path": "roberta-base"}, "adapter": config,
               "task_info": info, "params/adapter": params}  # fmt: skip
    hparams["params/trainable"] = params + 600
    save_hparams_to_yaml(run / "hparams.yaml", hparams)
    (run / "config.yaml").write_text(yaml.safe_dump({"seed_everything": seed}))
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for task in TASKS:
        for adapter in ADAPTERS:
            for seed in range(3):
                fake_run(root, task, adapter, seed)
    (root / "empty" / "version_0").mkdir(parents=True)  # a run that never logged: ignored
    return root


def test_best_value_epoch_and_seed_of_one_run(runs):
    result = read_run(RunFolder(runs / "cola_lora8" / "version_2"))
    values = curve("cola", "lora8", 2)
    assert result.metric == "val/mcc"
    assert result.best == pytest.approx(max(values))
    assert result.best_epoch == values.index(max(values))
    assert result.seed == 2 and result.adapter_params == 1000
    assert read_run(RunFolder(runs / "mnli_lora2" / "version_0")).metric == "val_matched/accuracy"


def test_csv_has_mean_and_sd_over_seeds(runs, tmp_path):
    written = build_report([runs], tmp_path / "out", formats=["csv"], plots=False)
    rows = list(csv.DictReader(written["csv"].open()))
    assert len(rows) == len(TASKS) * len(ADAPTERS)
    for row in rows:
        adapter = "lora8" if "r=8" in row["method"] else "lora2"
        bests = [max(curve(row["task"], adapter, seed)) for seed in range(3)]
        assert float(row["mean"]) == pytest.approx(statistics.fmean(bests), rel=1e-5)
        assert float(row["sd"]) == pytest.approx(statistics.stdev(bests), rel=1e-4)
        assert row["seeds"] == "0 1 2"
        epochs = [
            curve(row["task"], adapter, s).index(max(curve(row["task"], adapter, s)))
            for s in range(3)
        ]
        assert row["best_epochs"] == " ".join(map(str, epochs))
        assert row["adapter_params"] == str(ADAPTERS[adapter][1])


def test_markdown_and_latex_follow_the_paper_layout(runs, tmp_path, capsys):
    main(["report", "--runs", str(runs), "--out", str(tmp_path / "out"), "--formats", "[md, tex]"])
    printed = capsys.readouterr().out
    table = (tmp_path / "out" / "report.md").read_text()
    assert table in printed
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    # Paper column order: MNLI before CoLA; then the average.
    assert header == "| Method | # Params | mnli (accuracy) | cola (mcc) | Avg. |"
    bests = [max(curve("mnli", "lora8", s)) * 100 for s in range(3)]
    cell = f"{statistics.fmean(bests):.1f} ± {statistics.stdev(bests):.1f}"
    row = next(line for line in table.splitlines() if line.startswith("| lora (alpha=16.0, r=8)"))
    assert f"| 1.0K | {cell} |" in row
    tex = (tmp_path / "out" / "report.tex").read_text()
    assert r"\toprule" in tex and r"\# Params" in tex and r"$_{\pm" in tex
    assert (tmp_path / "out" / "val_curves.png").stat().st_size > 1000
    assert (tmp_path / "out" / "metric_vs_params.png").read_bytes()[:4] == b"\x89PNG"


def test_no_runs_is_a_clear_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SsmloraError, match="No finished runs"):
        build_report([tmp_path / "nothing"], tmp_path / "out")
    with pytest.raises(SsmloraError, match="does not exist"):
        RunFolder.find([tmp_path / "missing"])
    with pytest.raises(SsmloraError, match="Unknown report formats"):
        build_report([tmp_path], tmp_path / "out", formats=["html"])


def test_seconds_per_step_is_the_median_rate_between_logged_steps(tmp_path):
    """Steps 10, 20, 30, 40 logged 1 s apart (0.1 s/step) but one interval holding a 30 s
    evaluation: the median rate is the step's, and the report's detail table carries it."""
    run = fake_run(tmp_path, "cola", "lora8", 0)
    folder = RunFolder(run)
    assert folder.seconds_per_step("val/mcc") is not None  # every logged tag has wall times
    timed = tmp_path / "timed" / "version_0"
    timed.mkdir(parents=True)
    with SummaryWriter(str(timed)) as writer:
        for step, wall in ((10, 100.0), (20, 101.0), (30, 132.0), (40, 133.0), (50, 134.0)):
            writer.add_scalar("train/loss", 0.5, step, walltime=wall)
    assert RunFolder(timed).seconds_per_step() == pytest.approx(0.1)
    assert RunFolder(timed).seconds_per_step("absent/tag") is None
    rows = {r["method"]: r for r in csv.DictReader((build_report_csv(tmp_path)).splitlines())}
    assert all(float(r["s_per_step"]) >= 0 for r in rows.values())


def build_report_csv(root) -> str:
    out = root / "report"
    main(["report", f"--runs={root}", f"--out={out}", "--plots=false", "--formats=[csv]"])
    return (out / "report.csv").read_text()


def test_other_evaluation_splits_get_their_own_columns_at_the_headline_checkpoint(tmp_path):
    """State tracking's 2T/4T lengths (and MNLI mismatched): one column per split, the value
    logged at the step where the headline split was best (the same checkpoint), not its own
    best."""
    mismatched = [0.40, 0.45, 0.30, 0.50]  # best at epoch 3; matched is best at epoch 2
    runs = []
    for seed in (0, 1):
        run = fake_run(tmp_path, "mnli", "lora8", seed)
        with SummaryWriter(str(run)) as writer:
            for epoch, value in enumerate(mismatched):
                writer.add_scalar("val_mismatched/accuracy", value + seed / 100, 10 * epoch + 9)
        runs.append(run)
    result = read_run(RunFolder(runs[0]))
    assert result.best_epoch == 2
    assert result.other_splits["validation_mismatched"][:2] == ("val_mismatched/accuracy",
                                                                pytest.approx(0.30))  # fmt: skip
    written = build_report([tmp_path / "mnli_lora8"], tmp_path / "out", plots=False)
    text = written["md"].read_text()
    header, _, row = text.splitlines()[2:5]
    assert "mnli (accuracy)" in header and "mnli validation_mismatched (accuracy)" in header
    assert "30.5 ± 0.7" in row  # (0.30, 0.31) ×100: the epoch-2 values, not the best 0.50
