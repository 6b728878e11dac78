"""The ssmlora command end to end on the offline quickstart: fit, resume, export, bad input."""

import importlib
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForMultipleChoice, AutoModelForQuestionAnswering

from ssmlora_app.adapters import count_trainable_parameters, inject_adapters, read_adapter_config
from ssmlora_app.backbone import BackboneConfig, build_causal_lm, build_classifier, build_with_head
from ssmlora_app.cli import main
from ssmlora_app.tasks import get_task
from tests.conftest import REPO


def _is_adapter_file(path: Path) -> bool:
    """An adapter variant for ``ssmlora sweep --adapters`` (``class_path`` at its top), not a
    config of its own (tests/test_sweep.py checks those)."""
    return "class_path" in (yaml.safe_load(path.read_text()) or {})


CONFIGS = [p for p in sorted((REPO / "configs").glob("**/*.yaml")) if not _is_adapter_file(p)]


def fit(tmp_path: Path, *extra: str, version: str = "v") -> Path:
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart_random.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.logger.init_args.version={version}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            *extra,
        ]
    )
    return tmp_path / "quickstart_random" / version


@pytest.mark.slow
def test_quickstart_beats_chance_and_exports(tmp_path, caplog):
    caplog.set_level("INFO")
    run = fit(tmp_path)
    text = caplog.text
    accuracy = float(text.split("val/accuracy = ")[1].split()[0])
    chance = float(text.split("majority-class accuracy (chance) = ")[1].split()[0])
    assert accuracy > 0.85 and accuracy > chance + 0.25, text
    assert (run / "config.yaml").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(checkpoint["state_dict"])
    assert keys and all(".lora_" in k or k.startswith("model.classifier.") for k in keys)
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    hparams = (run / "hparams.yaml").read_text()
    assert "params/trainable" in hparams


class StopAfterFirstEpoch(L.Callback):
    """Ends fit after epoch 0 like an interrupted run: same config, so the same LR schedule."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.mark.slow
def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(tmp_path):
    quick = ["--trainer.max_epochs=2", "--data.max_train_samples=256", "--data.max_eval_samples=64"]
    straight = fit(tmp_path, *quick, version="straight")
    stop = "--trainer.callbacks+=tests.test_cli.StopAfterFirstEpoch"
    first = fit(tmp_path, *quick, stop, version="resumed")
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    resumed = fit(
        tmp_path, *quick, f"--ckpt_path={first / 'checkpoints' / 'last.ckpt'}", version="resumed"
    )
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


FRAGMENTS = ("strategy", "precision")
"""Config folders whose files are combined with a task config rather than run alone."""


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_parses(config, capsys):
    configs = ["--config", str(config)]
    if config.parent.name in FRAGMENTS:
        configs = ["--config", str(REPO / "configs" / "quickstart_random.yaml"), *configs]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs, "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: ssmlora_app.adapters" in capsys.readouterr().out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssmlora_app", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--data.task=sst3", "Unknown task 'sst3'"),
        ("--data.data_dir=/nonexistent", "reads no files: remove data.data_dir"),
        ("--model.adapter.init_args.r=0", "rank r must be a positive integer"),
        ("--model.adapter.init_args.target_modules=[q_proj]", "matches no layer"),
        ("--model.init_adapter_from=/nonexistent", "is no adapter folder"),
        ("--model.adapter.init_args.r=100", "exceeds the width of"),
        ("--trainer.precision=bf16-true", "AdamW's small updates round to zero"),
        ("--trainer.logger.init_args.save_dir=/dev/null/runs", "Cannot create the log folder"),
        ("--model.optimzer.init_args.lr=0.1", "unrecognized arguments: --model.optimzer"),
        ("--data.max_length=0", "must be positive"),
        ("--data.max_length=64", "data.max_length=64 exceeds the 38 positions of the roberta"),
        ("--trainer.strategy=fsdp", "trainer settings: The strategy `fsdp` requires a GPU"),
        ("--model.adapter.class_path=ssmlora_app.adapters.NopeConfig", "NopeConfig"),
    ],
)
def test_bad_input_fails_early_with_a_clear_message(tmp_path, override, message, capsys):
    args = ["fit", "--config", str(REPO / "configs" / "quickstart_random.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}", override]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    output = capsys.readouterr()
    assert message in output.err
    assert "Traceback" not in output.err
    assert not (tmp_path / "quickstart_random").exists() or not list(tmp_path.glob("**/*.ckpt"))


@pytest.mark.slow
def test_the_console_script_prints_one_line_errors(tmp_path):
    result = run_cli("fit", "--config", "configs/quickstart_random.yaml", "--data.task=sst3")
    assert result.returncode == 2
    assert "ssmlora: error: Unknown task 'sst3'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_hrm_fit_reduce_then_validate_the_reduced_adapter(tmp_path, caplog, capsys):
    caplog.set_level("INFO")
    llama = (
        "--model.backbone.config={model_type: llama, hidden_size: 32, intermediate_size: 64, "
        "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
        "max_position_embeddings: 64}"
    )
    hrm = "--model.adapter={class_path: ssmlora_app.adapters.HRMConfig, init_args: {d_state: 8, target_modules: [mlp]}}"
    quick = ["--trainer.max_epochs=1", "--data.max_train_samples=128", "--data.max_eval_samples=64"]
    run = fit(tmp_path, llama, hrm, *quick, version="hrm")
    reduced = tmp_path / "reduced"
    main(
        [
            "reduce",
            "--adapter",
            str(run / "adapter"),
            "--out",
            str(reduced),
            "--eps",
            "0.1",
            "--train",
            "gate",
        ]
    )
    assert "SSM parameters" in capsys.readouterr().out
    assert read_adapter_config(reduced).train == "gate"
    assert (reduced / "hankel_singular_values.json").is_file()
    caplog.clear()
    main(
        [
            "validate",
            "--config",
            str(REPO / "configs" / "quickstart_random.yaml"),
            llama,
            "--model.adapter=null",
            f"--model.init_adapter_from={reduced}",
            "--data.max_eval_samples=64",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert "val/accuracy" in caplog.text or "val/accuracy" in capsys.readouterr().out


# Shapes of the hub backbones the shipped configs name (their config.json values), so every
# config's adapter is injected into the real architecture on the meta device, offline.
HUB_SHAPES = {
    "roberta-base": {"model_type": "roberta"},
    "roberta-large": {"model_type": "roberta", "hidden_size": 1024, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "intermediate_size": 4096},
    "gpt2": {"model_type": "gpt2"},
    "microsoft/deberta-v3-base": {"model_type": "deberta-v2", "vocab_size": 128100,
                                  "relative_attention": True, "position_buckets": 256,
                                  "pos_att_type": ["p2c", "c2p"], "max_relative_positions": -1,
                                  "position_biased_input": False, "type_vocab_size": 0,
                                  "norm_rel_ebd": "layer_norm", "share_att_key": True},
    "mistralai/Mistral-7B-v0.1": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                                  "num_hidden_layers": 32, "num_attention_heads": 32,
                                  "num_key_value_heads": 8, "vocab_size": 32000},
    "state-spaces/mamba-130m-hf": {"model_type": "mamba", "hidden_size": 768, "num_hidden_layers": 24,
                                   "state_size": 16, "expand": 2, "vocab_size": 50280},
    # the real encoder `make weights` fetches (configs/quickstart.yaml)
    "~/.cache/ssmlora/weights/all-MiniLM-L6-v2": {"model_type": "bert", "hidden_size": 384,
                                                  "num_hidden_layers": 6, "num_attention_heads": 12,
                                                  "intermediate_size": 1536, "vocab_size": 30522},
    # the real decoder `make weights` writes (the dequantised GGUF; configs/real/smollm2_*.yaml)
    "~/.cache/ssmlora/weights/SmolLM2-135M-Instruct": {"model_type": "llama", "hidden_size": 576,
                                                       "intermediate_size": 1536, "num_hidden_layers": 30,
                                                       "num_attention_heads": 9, "num_key_value_heads": 3,
                                                       "vocab_size": 49152, "tie_word_embeddings": True},
}  # fmt: skip


HEADS = {"extractive_qa": AutoModelForQuestionAnswering,
         "multiple_choice": AutoModelForMultipleChoice}  # fmt: skip


def _hub_configs():
    for path in CONFIGS:
        config = yaml.safe_load(path.read_text())
        if config.get("model", {}).get("backbone", {}).get("name_or_path"):
            yield path


@pytest.mark.parametrize("path", list(_hub_configs()), ids=lambda p: p.name)
def test_every_hub_config_injects_into_its_backbone_shapes(path):
    config = yaml.safe_load(path.read_text())
    backbone = config["model"]["backbone"]["name_or_path"]
    assert backbone in HUB_SHAPES, f"add {backbone}'s shapes to HUB_SHAPES"
    fields = dict(HUB_SHAPES[backbone])
    spec = config["model"]["adapter"]
    module_name, _, class_name = spec["class_path"].rpartition(".")
    adapter = getattr(importlib.import_module(module_name), class_name)(**spec.get("init_args", {}))
    task = config["data"]["task"]
    if isinstance(task, dict):  # the class form: {class_path, init_args}
        module_name, _, class_name = task["class_path"].rpartition(".")
        task = getattr(importlib.import_module(module_name), class_name)(**task["init_args"])
    else:
        task = get_task(task)
    problem = "regression" if task.is_regression else "single_label_classification"
    with torch.device("meta"):
        if config["data"].get("objective") == "causal_lm":
            model = build_causal_lm(BackboneConfig(config=fields))
        elif task.objectives[0] in HEADS:  # the span head, the multiple-choice head
            model = build_with_head(HEADS[task.objectives[0]], BackboneConfig(config=fields))
        else:
            model = build_classifier(BackboneConfig(config=fields), task.num_labels, problem)
    inject_adapters(model, adapter)
    assert count_trainable_parameters(model, include_head=False) > 0


@pytest.mark.slow
def test_a_misspelt_yaml_key_is_named(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  batch_sise: 4\n")
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs" / "quickstart_random.yaml"),
                "--config",
                str(typo),
            ]
        )
    assert "does not accept option 'data.batch_sise'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_checkpoint_from_another_adapter_configuration_is_refused(tmp_path, capsys):
    quick = ["--trainer.max_epochs=1", "--data.max_train_samples=64", "--data.max_eval_samples=32"]
    run = fit(tmp_path, *quick, version="r8")
    with pytest.raises(SystemExit) as exit_info:
        fit(
            tmp_path,
            *quick,
            "--model.adapter.init_args.r=4",
            "--trainer.max_epochs=2",  # a resume that trains on (else: "already trained")
            f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            version="r4",
        )
    assert exit_info.value.code == 2
    assert "does not fit this config: its adapter has r=8 (now 4)" in capsys.readouterr().err


@pytest.mark.slow
def test_float32_matmul_precision_is_applied_before_the_run(tmp_path, capsys):
    before = torch.get_float32_matmul_precision()
    common = [
        "validate",
        "--config",
        str(REPO / "configs" / "quickstart_random.yaml"),
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.limit_val_batches=1",
        "--allow_untrained=true",
    ]
    try:
        torch.set_float32_matmul_precision("highest")
        main([*common, "--float32_matmul_precision=medium"])
        assert torch.get_float32_matmul_precision() == "medium"
        main([*common, "--float32_matmul_precision=null"])  # left as it is
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(SystemExit) as err:
            main([*common, "--float32_matmul_precision=low"])
        assert err.value.code == 2 and "float32_matmul_precision" in capsys.readouterr().err
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.slow
def test_the_config_of_an_older_run_still_parses(tmp_path, capsys):
    """A run's saved config.yaml from before the adapter contract and the typed tasks holds the
    old callback keys and ``data.task_args: null``: accepted (and ignored)."""
    config = yaml.safe_load((REPO / "configs" / "quickstart_random.yaml").read_text())
    config["hrm_diagnostics"] = {"every_n_steps": 50, "per_layer_histograms": True}
    config["ssmlora_diagnostics"] = {"every_n_steps": 50}
    config["sdt_selection"] = {}
    config["data"]["task_args"] = None
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(path), "--print_config"])
    assert done.value.code in (0, None)
    assert "task: quickstart" in capsys.readouterr().out


def test_the_progress_bar_shows_no_epoch_total_on_a_step_bounded_fit():
    """max_steps with max_epochs -1: Lightning's rich bar printed "Epoch 0/-2"."""
    from types import SimpleNamespace

    from ssmlora_app.callbacks.progress import RichBar

    bar = RichBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
