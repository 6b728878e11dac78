"""ssmlora sweep: the grid's commands, and a tiny real sweep that ssmlora report reads."""

import json

import pytest
import yaml

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


def test_adapter_files_are_variants_named_by_their_stem(tmp_path):
    """A grid of adapter variants: one YAML file each, every field spelt out (defaults filled in
    from the class), the run named after the file."""
    (tmp_path / "lora_r4_qkv.yaml").write_text(
        "class_path: ssmlora_app.adapters.LoRAConfig\n"
        "init_args: {r: 4, target_modules: [query, key, value]}\n"
    )
    (tmp_path / "sparse.yaml").write_text(
        "class_path: ssmlora_app.adapters.SSMLoRAConfig\ninit_args: {preset: attention_sparse}\n"
    )
    files = [str(tmp_path / "lora_r4_qkv.yaml"), str(tmp_path / "sparse.yaml")]
    commands = sweep_commands([QUICKSTART], [0], [*files, "hrm"], "out", [])
    names = [next(a for a in c if "logger.init_args.name=" in a).split("=")[1] for c in commands]
    assert names == ["quickstart_random_lora_r4_qkv", "quickstart_random_sparse",
                     "quickstart_random_hrm"]  # fmt: skip
    adapter = json.loads(
        next(a for a in commands[0] if a.startswith("--model.adapter=")).split("=", 1)[1]
    )
    assert adapter["class_path"] == "ssmlora_app.adapters.lora.LoRAConfig"
    assert adapter["init_args"]["r"] == 4 and adapter["init_args"]["alpha"] == 16.0
    assert adapter["init_args"]["target_modules"] == ["query", "key", "value"]


def test_an_adapter_file_carries_its_recipe_and_the_sweep_overrides_win(tmp_path):
    (tmp_path / "hrm_fast.yaml").write_text(
        "class_path: ssmlora_app.adapters.HRMConfig\ninit_args: {d_state: 8}\n"
        'overrides: ["--model.optimizer.init_args.lr=0.01"]\n'
    )
    (command,) = sweep_commands([QUICKSTART], [0], [str(tmp_path / "hrm_fast.yaml")], "out",
                                ["--model.optimizer.init_args.lr=0.003"])  # fmt: skip
    lrs = [a for a in command if a.startswith("--model.optimizer.init_args.lr=")]
    assert lrs == ["--model.optimizer.init_args.lr=0.01", "--model.optimizer.init_args.lr=0.003"]
    assert command[-1] == lrs[-1]  # the sweep's own overrides come last: they win
    (tmp_path / "bad.yaml").write_text(
        "class_path: ssmlora_app.adapters.HRMConfig\noverrides: [lr=0.01]\n"
    )
    with pytest.raises(SsmloraError, match="a list of --key=value"):
        sweep_commands([QUICKSTART], [0], [str(tmp_path / "bad.yaml")], "out", [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("r: 4", "must hold an adapter section"),
        ("class_path: ssmlora_app.adapters.Nope", "cannot import"),
        ("class_path: torch.nn.Linear", "is not an adapter config class"),
        ("class_path: ssmlora_app.adapters.LoRAConfig\ninit_args: {rank: 4}", "unexpected keyword"),
        ("class_path: ssmlora_app.adapters.LoRAConfig\ninit_args: {r: 0}", "positive integer"),
    ],
)
def test_bad_adapter_files_are_refused_before_any_run(tmp_path, text, message):
    (tmp_path / "a.yaml").write_text(text + "\n")
    with pytest.raises(SsmloraError, match=message):
        sweep_commands([QUICKSTART], [0], [str(tmp_path / "a.yaml")], "out", [])
    with pytest.raises(SsmloraError, match="no adapter file"):
        sweep_commands([QUICKSTART], [0], [str(tmp_path / "b.yaml")], "out", [])


@pytest.mark.slow
def test_a_tiny_sweep_then_report(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    runs = tmp_path / "runs"
    quick = '["--trainer.max_epochs=1","--data.max_train_samples=64","--data.max_eval_samples=32","--trainer.enable_progress_bar=false"]'
    main(["sweep", "--configs", f"[{QUICKSTART}]", "--seeds", "[0,1]", "--adapters", "[lora]",
          "--runs", str(runs), "--overrides", quick])  # fmt: skip
    assert sorted(p.parent.name + "/" + p.name for p in runs.glob("*/seed*")) == [
        "quickstart_random_lora/seed0", "quickstart_random_lora/seed1",
    ]  # fmt: skip
    main(["report", "--runs", str(runs), "--out", str(tmp_path / "report"), "--plots", "false"])
    table = (tmp_path / "report" / "report.md").read_text()
    assert "±" in table and table.count("quickstart") >= 1


ADAPTER_FILES = sorted(
    p
    for p in (REPO / "configs").glob("**/*.yaml")
    if "class_path" in (yaml.safe_load(p.read_text()) or {})
)


@pytest.mark.parametrize("path", ADAPTER_FILES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_adapter_file_is_a_valid_variant(path):
    (command,) = sweep_commands([QUICKSTART], [0], [str(path)], "out", [])
    assert any(a.startswith("--model.adapter=") for a in command)
