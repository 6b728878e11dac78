"""ssmlora report pools honestly (issue 16): a cell holds the seeds of one configuration (every
setting but the seed and the logging keys), one run per seed (an identical rerun or a killed run
and its resumed continuation count once), evaluation-only folders are not runs, and a run whose
best score stays at the majority-class baseline is marked collapsed with a footnote."""

import pytest
import yaml
from lightning.pytorch.core.saving import save_hparams_to_yaml
from torch.utils.tensorboard import SummaryWriter

from ssmlora_app.run import RunFolder
from ssmlora_app.tools.report import build_report
from ssmlora_app.tools.report.results import align_versions, group, pool, read_run

LORA = {"adapter_type": "lora", "r": 8, "alpha": 16.0}
TASKS = {"sst2": ("val/accuracy", ("validation",)), "cola": ("val/mcc", ("validation",))}


def make_run(folder, task="sst2", seed=0, values=(0.7, 0.8), lr=0.001, baseline=0.5,
             finished=True, trained=True):  # fmt: skip
    """A run folder as ``ssmlora fit`` writes it: events (train loss, the headline metric, the
    majority baseline), hparams.yaml, config.yaml and, when finished, its adapter."""
    tag, splits = TASKS[task]
    folder.mkdir(parents=True)
    with SummaryWriter(str(folder)) as writer:
        if baseline is not None:
            writer.add_scalar("val/majority_baseline", baseline, 0)
        for epoch, value in enumerate(values):
            if trained:
                writer.add_scalar("train/loss", 1.0 / (epoch + 1), 10 * epoch + 9)
            writer.add_scalar(tag, value, 10 * epoch + 9)
    info = {"task": task, "num_labels": 2, "metrics": (tag.split("/")[1],),
            "eval_splits": splits, "problem_type": "single_label_classification"}  # fmt: skip
    save_hparams_to_yaml(folder / "hparams.yaml", {"backbone": {"name_or_path": "roberta-base"},
                         "adapter": LORA, "task_info": info, "params/adapter": 100})  # fmt: skip
    config = {"seed_everything": seed, "data": {"task": task, "shuffle_seed": seed},
              "model": {"optimizer": {"init_args": {"lr": lr}}},
              "trainer": {"logger": {"init_args": {"version": folder.name}}}}  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if finished:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text("{}")
    return folder


def results(root):
    return [r for r in map(read_run, RunFolder.find([root])) if r is not None]


def test_seeds_of_one_configuration_pool_and_other_settings_do_not(tmp_path):
    for seed, value in enumerate((0.8, 0.9, 0.85)):
        make_run(tmp_path / "a" / f"seed{seed}", seed=seed, values=(0.6, value))
    make_run(tmp_path / "b" / "seed0", lr=0.01, values=(0.6, 0.7))
    cells = sorted(group(pool(results(tmp_path))[0]), key=lambda c: len(c.runs))
    assert [len(c.runs) for c in cells] == [1, 3]
    assert sorted(cells[1].values) == pytest.approx([0.8, 0.85, 0.9])
    assert cells[0].method == "lora (lr=0.01)" and cells[1].method == "lora (lr=0.001)"


def test_an_option_added_since_an_older_run_does_not_split_its_seeds(tmp_path):
    """Seed 0 was written before the app had ``data.num_beams`` (its config lacks the key); seeds
    1 and 2 record the default. They pool; a setting both record and that differs still splits."""
    for seed in range(3):
        run = make_run(tmp_path / "a" / f"seed{seed}", seed=seed, values=(0.6, 0.8 + seed / 100))
        if seed:
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["data"]["num_beams"] = 1
            (run / "config.yaml").write_text(yaml.safe_dump(config))
    found = results(tmp_path)
    assert len({r.config_key for r in found}) == 2  # as the configs read
    align_versions(found)
    (cell,) = group(pool(found)[0])
    assert len(cell.runs) == 3 and cell.method == "lora"
    make_run(tmp_path / "b" / "seed0", lr=0.01, values=(0.6, 0.7))
    found = results(tmp_path)
    align_versions(found)
    assert sorted(len(c.runs) for c in group(pool(found)[0])) == [1, 3]


def test_a_rerun_and_a_resumed_run_count_once(tmp_path):
    make_run(tmp_path / "first" / "seed0", values=(0.6, 0.9))
    make_run(tmp_path / "rerun" / "seed0", values=(0.6, 0.9))  # the same settings and seed
    make_run(tmp_path / "killed" / "seed1", seed=1, values=(0.6,), finished=False)
    resumed = make_run(tmp_path / "resumed" / "seed1", seed=1, values=(0.6, 0.7, 0.8))
    kept, left_out = pool(results(tmp_path))
    assert len(kept) == 2 and len(left_out) == 2
    assert resumed in [r.path for r in kept]
    assert tmp_path / "killed" / "seed1" in [r.path for r in left_out]
    (cell,) = group(kept)
    assert sorted(cell.values) == pytest.approx([0.8, 0.9])
    build_report([tmp_path], tmp_path / "out", formats=["md"], plots=False)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Left out (the same settings and seed" in text and str(tmp_path / "killed") in text


def test_an_evaluation_only_folder_is_not_a_run(tmp_path):
    validate = make_run(tmp_path / "validate", trained=False, baseline=None, finished=False)
    assert read_run(RunFolder(validate)) is None
    assert read_run(RunFolder(make_run(tmp_path / "fit"))) is not None
    # A fit shorter than log_every_n_steps logs no train/ scalar: its adapter makes it a run.
    short = make_run(tmp_path / "short", trained=False, baseline=None, finished=True)
    assert read_run(RunFolder(short)) is not None


def test_a_collapsed_run_is_marked_with_a_footnote(tmp_path):
    make_run(tmp_path / "sst2" / "seed0", values=(0.55, 0.55), baseline=0.55)  # all one class
    make_run(tmp_path / "sst2" / "seed1", seed=1, values=(0.55, 0.9), baseline=0.55)
    make_run(tmp_path / "cola" / "seed0", task="cola", values=(0.0, -0.01), baseline=0.69)
    make_run(tmp_path / "fine" / "seed0", task="cola", values=(0.1, 0.4), lr=0.01)
    cells = {(c.task, c.method): c for c in group(pool(results(tmp_path))[0])}
    assert [r.seed for r in cells["sst2", "lora"].collapsed] == [0]
    assert len(cells["cola", "lora (lr=0.001)"].collapsed) == 1
    assert not cells["cola", "lora (lr=0.01)"].collapsed
    build_report([tmp_path], tmp_path / "out", formats=["md", "csv", "tex"], plots=False)
    text = (tmp_path / "out" / "report.md").read_text()
    assert text.count("(collapsed†)") == 2
    assert "† collapsed: the run's best score stays at what always predicting the majority" in text
    assert "sst2, lora, seed 0: best 55.0 stays at the majority-class accuracy 55.0" in text
    assert "cola, lora (lr=0.001), seed 0: best 0.0 stays at 0, the MCC" in text
    assert "collapsed" in (tmp_path / "out" / "report.tex").read_text()
    assert "collapsed_seeds" in (tmp_path / "out" / "report.csv").read_text()
