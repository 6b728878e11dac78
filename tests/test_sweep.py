"""ssmlora sweep: the grid's commands, and a tiny real sweep that ssmlora report reads."""

import pytest

from ssmlora_app.cli import main
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tools.sweep import sweep_commands
from tests.conftest import REPO

QUICKSTART = str(REPO / "configs" / "quickstart_random.yaml")


def test_one_command_per_config_adapter_and_seed():
    commands = sweep_commands(
        [QUICKSTART], [0, 1, 2], ["lora", "ssmlora"], "out", ["--trainer.max_epochs=1"]
    )
    assert len(commands) == 6
    names = {next(a for a in c if "logger.init_args.name=" in a).split("=")[1] for c in commands}
    assert names == {"quickstart_random_lora", "quickstart_random_ssmlora"}
    ssmlora = next(c for c in commands if "name=quickstart_random_ssmlora" in " ".join(c))
    assert any('"class_path": "ssmlora_app.adapters.ssmlora.SSMLoRAConfig"' in a for a in ssmlora)
    assert "--seed_everything=0" in commands[0] and "--data.shuffle_seed=0" in commands[0]
    assert commands[0][-1] == "--trainer.max_epochs=1"


def test_bad_grids_are_refused():
    with pytest.raises(SsmloraError, match="unknown adapter 'dora'"):
        sweep_commands([QUICKSTART], [0], ["dora"], "out", [])
    with pytest.raises(SsmloraError, match="no config file"):
        sweep_commands(["nope.yaml"], [0], None, "out", [])


@pytest.mark.slow
def test_a_tiny_sweep_then_report(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    runs = tmp_path / "runs"
    quick = '["--trainer.max_epochs=1","--data.max_train_samples=64","--data.max_eval_samples=32","--trainer.enable_progress_bar=false"]'
    main(["sweep", "--configs", f"[{QUICKSTART}]", "--seeds", "[0,1]", "--adapters", "[lora,hrm]",
          "--runs", str(runs), "--overrides", quick])  # fmt: skip
    assert sorted(p.parent.name + "/" + p.name for p in runs.glob("*/seed*")) == [
        "quickstart_random_hrm/seed0", "quickstart_random_hrm/seed1", "quickstart_random_lora/seed0", "quickstart_random_lora/seed1",
    ]  # fmt: skip
    main(["report", "--runs", str(runs), "--out", str(tmp_path / "report"), "--plots", "false"])
    table = (tmp_path / "report" / "report.md").read_text()
    assert "±" in table and table.count("quickstart") >= 1
