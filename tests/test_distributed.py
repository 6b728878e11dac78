"""Data-parallel training: FSDP units never mix frozen and trainable parameters; a 2-process DDP
fit on CPU gives the validation metrics of a 1-process fit with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from ssmlora_app.adapters import HRMConfig, LoRAConfig, SSMLoRAConfig, inject_adapters
from ssmlora_app.distributed import fsdp_units
from tests.conftest import REPO
from tests.helpers import tiny_classifier

LLAMA = {"model_type": "llama", "vocab_size": 120, "hidden_size": 32, "intermediate_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64, "pad_token_id": 0}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "adapter"),
    [
        (None, LoRAConfig(r=4)),
        (None, SSMLoRAConfig(preset="full_model")),
        (LLAMA, HRMConfig(d_state=4)),
        (LLAMA, LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])),
    ],
)
def test_fsdp_units_are_all_frozen_or_all_trainable(fields, adapter):
    model = inject_adapters(tiny_classifier(fields), adapter)
    params = dict(model.named_parameters())
    units = fsdp_units(model)
    trainable_units = 0
    for unit, names in units.items():
        flags = {params[n].requires_grad for n in names}
        assert len(flags) == 1, f"unit {unit!r} mixes frozen and trainable: {names}"
        trainable_units += flags == {True}
    assert trainable_units > 0 and len(units) > trainable_units


def _fit(tmp_path, name, *extra):
    """A quickstart fit without dropout (so the processes draw no random numbers that differ)."""
    config = yaml.safe_load((REPO / "configs" / "quickstart_random.yaml").read_text())
    config["model"]["backbone"]["config"].update(
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    metrics = tmp_path / f"{name}.json"
    args = [
        "fit", "--config", str(path), "--trainer.max_epochs=2", "--data.max_train_samples=256",
        "--data.max_eval_samples=128", f"--trainer.default_root_dir={tmp_path / name}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.callbacks+=tests.metrics_dump.DumpMetrics", *extra,
    ]  # fmt: skip
    env = dict(os.environ, METRICS_JSON=str(metrics))
    result = subprocess.run(
        [sys.executable, "-m", "tests.metrics_dump", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(metrics.read_text())


ADAPTERS = {
    "lora": [],
    "ssmlora": ["--model.adapter={class_path: ssmlora_app.adapters.SSMLoRAConfig, init_args: "
                "{preset: attention_sparse, target_modules: null, dropout: 0.0}}"],
    "hrm": ["--model.adapter={class_path: ssmlora_app.adapters.HRMConfig, init_args: "
            "{d_state: 8, target_modules: null}}"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path, adapter):
    extra = ADAPTERS[adapter]
    single = _fit(tmp_path, "single", "--data.batch_size=32", *extra)
    ddp = _fit(tmp_path, "ddp", "--data.batch_size=16", "--trainer.strategy=ddp", "--trainer.devices=2",
               "--trainer.accelerator=cpu", *extra)  # fmt: skip
    assert single.keys() == ddp.keys() and "val/accuracy" in single
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-4), key
