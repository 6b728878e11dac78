"""configs/grids/mamba-130m: the SDLoRA repository's GLUE grid as adapter files. Each file's
trainable count (its comment) is checked on Mamba-130M shapes; the grid becomes one ``ssmlora
fit`` per row through ``ssmlora sweep``, and ``ssmlora report`` tabulates a (tiny) sweep of a row."""

import re
from pathlib import Path

import pytest
import yaml

from ssmlora_app.adapters import count_trainable_parameters, inject_adapters
from ssmlora_app.cli import main
from ssmlora_app.tools.sweep import _adapter_file, sweep_commands
from tests.conftest import REPO
from tests.test_mamba_state import mamba_130m

GRID = REPO / "configs" / "grids" / "mamba-130m"
FILES = sorted(GRID.glob("*.yaml"))
COUNT = re.compile(r"^# trainable \(mamba-130m, score head excluded\): ([\d,]+)", re.MULTILINE)


def stated_count(path: Path) -> int:
    match = COUNT.search(path.read_text())
    assert match, f"{path.name} states no trainable count"
    return int(match.group(1).replace(",", ""))


def test_the_grid_holds_the_reference_rows():
    """The benchmark folder's 19 rows (000 full + 18 PEFT rows) and the sdlora folder's 6."""
    stems = [p.stem for p in FILES]
    assert [s[:3] for s in stems] == [f"{i:03d}" for i in range(25)]
    for path in FILES:
        cls, init_args, overrides = _adapter_file(path)
        assert [o.split("=")[0] for o in overrides] == ["--model.optimizer.init_args.lr"], path
        cls(**init_args).validate()
    assert (GRID / "README.md").is_file()


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_each_rows_trainable_count_on_mamba_130m_shapes(path):
    cls, init_args, _ = _adapter_file(path)
    model = inject_adapters(mamba_130m(), cls(**init_args))
    assert count_trainable_parameters(model, include_head=False) == stated_count(path)


def test_the_sweep_runs_one_fit_per_row_with_its_learning_rate():
    config = str(REPO / "configs" / "mamba-130m_rte_lora.yaml")
    commands = sweep_commands(
        [config], [0], [str(p) for p in FILES], "runs", ["--data.batch_size=4"]
    )
    assert len(commands) == len(FILES)
    for path, command in zip(FILES, commands, strict=True):
        cls, _, overrides = _adapter_file(path)
        assert any(cls.__qualname__ in part for part in command), path.name
        lr = command.index(overrides[0])
        assert lr < command.index("--data.batch_size=4")  # the sweep's overrides come last
        assert any(a.endswith(f"_{path.stem}") for a in command if "logger.init_args.name=" in a)


@pytest.mark.slow
def test_a_tiny_sweep_of_a_grid_row_then_report(tmp_path, monkeypatch):
    """A row of the grid (a state method, with its file's learning rate) on the quickstart's
    random Mamba (the real mamba-130m weights are not available offline), one seed, then the
    report table. The sweep's command runs in this process (``ssmlora sweep`` runs the same
    command in a subprocess: tests/test_sweep.py); one row keeps the suite fast, since every file
    is checked as a sweep variant above and every method runs ``ssmlora fit`` in the battery."""
    monkeypatch.chdir(REPO)
    runs = tmp_path / "runs"
    row = GRID / "017_init_state.yaml"
    quick = ["--trainer.max_epochs=1", "--data.max_train_samples=64",
             "--data.max_eval_samples=32", "--trainer.enable_progress_bar=false"]  # fmt: skip
    (command,) = sweep_commands(["configs/quickstart_sdt.yaml"], [0], [str(row)], str(runs), quick)
    main(command)
    done = sorted(p.parent.name for p in runs.glob("*/seed0"))
    assert done == [f"quickstart_sdt_{row.stem}"]
    run_config = yaml.safe_load((runs / done[0] / "seed0" / "config.yaml").read_text())
    assert run_config["model"]["optimizer"]["init_args"]["lr"] == 0.002  # the file's, not 0.005
    main(["report", "--runs", str(runs), "--out", str(tmp_path / "report"), "--plots", "false"])
    table = (tmp_path / "report" / "report.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| quickstart |")]
    assert [line.split("|")[2].strip() for line in lines] == ["init_state"], table
