"""configs/grids/mamba-130m: the SDLoRA repository's GLUE grid as adapter files. Each file's
trainable count (its comment) is checked on Mamba-130M shapes; the grid becomes one ``ssmlora
fit`` per row through ``ssmlora sweep``, and ``ssmlora report`` tabulates a (tiny) sweep of it."""

import re
from pathlib import Path

import pytest

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
def test_a_tiny_sweep_of_grid_rows_then_report(tmp_path, monkeypatch):
    """Three rows of the grid on the quickstart's random Mamba (the real mamba-130m weights are
    not available offline), one seed, then the report table."""
    monkeypatch.chdir(REPO)
    runs = tmp_path / "runs"
    rows = [
        GRID / f"{stem}.yaml"
        for stem in ("006_lora_outproj", "009_layer_freeze_A_log", "017_init_state")
    ]
    quick = ('["--trainer.max_epochs=1","--data.max_train_samples=64","--data.max_eval_samples=32",'
             '"--trainer.enable_progress_bar=false"]')  # fmt: skip
    main(["sweep", "--configs", "[configs/quickstart_sdt.yaml]", "--seeds", "[0]",
          "--adapters", "[" + ",".join(str(p) for p in rows) + "]", "--runs", str(runs),
          "--overrides", quick])  # fmt: skip
    done = sorted(p.parent.name for p in runs.glob("*/seed0"))
    assert done == [f"quickstart_sdt_{p.stem}" for p in rows]
    main(["report", "--runs", str(runs), "--out", str(tmp_path / "report"), "--plots", "false"])
    table = (tmp_path / "report" / "report.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| quickstart |")]
    assert sorted(line.split("|")[2].strip() for line in lines) == [
        "init_state", "layer_freeze", "mamba_lora"
    ]  # fmt: skip
