"""Real data end to end: a small RoBERTa (random weights) with the real RoBERTa tokenizer on slices
of the real SST-2 and CoLA files: fit, resume, validate, export, reload into ours and peft."""

import pytest
import torch
import yaml
from peft import PeftModel

from ssmlora_app.adapters import load_adapter
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.cli import main
from ssmlora_app.data.datamodule import TaskDataModule

SMALL_ROBERTA = {
    "model_type": "roberta",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 70,
    # Larger random weights than BERT's 0.02, so a random backbone still tells inputs apart.
    "initializer_range": 0.3,
}


def write_config(tmp_path, shared_data, task):
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 5,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path), "name": task, "version": "run"},
            },
        },
        "model": {
            "backbone": {
                "config": SMALL_ROBERTA,
                "tokenizer": str(shared_data / "models" / "roberta-base-tokenizer"),
            },
            "adapter": {
                "class_path": "ssmlora_app.adapters.LoRAConfig",
                "init_args": {"r": 4, "alpha": 8, "target_modules": ["query", "value"]},
            },
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}},
        },
        "data": {
            "task": task,
            "data_dir": str(shared_data / "glue"),
            "max_length": 64,
            "batch_size": 16,
            "max_train_samples": 160,
            "max_eval_samples": 64,
        },
    }
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tmp_path / task / "run"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sst2", "cola"])
def test_fit_resume_validate_export_reload(tmp_path, shared_data, task, caplog):
    caplog.set_level("INFO")
    config, run = write_config(tmp_path, shared_data, task)
    main(["fit", "--config", str(config), "--trainer.max_epochs=1"])
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    main(["fit", "--config", str(config), f"--ckpt_path={last}"])  # resumes into epoch 1
    assert torch.load(last, weights_only=True)["epoch"] == 1
    metric = "val/accuracy" if task == "sst2" else "val/mcc"
    assert f"{metric} = " in caplog.text
    main(["validate", "--config", str(config), f"--ckpt_path={last}"])

    # The exported adapter reloads into our model and into peft with equal logits.
    data = TaskDataModule(
        task=task,
        data_dir=str(shared_data / "glue"),
        tokenizer=str(shared_data / "models" / "roberta-base-tokenizer"),
        max_length=64,
    )
    info = data.task_info
    backbone = BackboneConfig(config=SMALL_ROBERTA)

    def fresh():
        return build_classifier(
            backbone, info.num_labels, info.problem_type, info.vocab_size, info.pad_token_id
        ).eval()

    batch = data.tokenizer(
        ["a gripping , funny film .", "dull ."], padding=True, return_tensors="pt"
    )
    ours = load_adapter(fresh(), run / "adapter").eval()
    theirs = PeftModel.from_pretrained(fresh(), run / "adapter").eval()
    with torch.no_grad():
        expected = ours(**batch).logits
        assert torch.allclose(theirs(**batch).logits, expected, atol=1e-6)
        assert not torch.allclose(fresh()(**batch).logits, expected, atol=1e-4)  # it was trained


def _mean_loss(model, data):
    model.eval()
    with torch.no_grad():
        losses = [model(**b.inputs, labels=b.labels).loss for b in data.train_dataloader()]
    return float(torch.stack(losses).mean())


@pytest.mark.slow
def test_ssmlora_fit_lowers_the_training_loss_on_real_sst2(tmp_path, shared_data):
    config, run = write_config(tmp_path, shared_data, "sst2")
    adapter = (
        "--model.adapter={class_path: ssmlora_app.adapters.SSMLoRAConfig, init_args: "
        "{preset: full_model, target_modules: null, r: 8, alpha: 16, dropout: 0.0}}"
    )
    args = ["--trainer.max_epochs=10", "--data.max_train_samples=96", "--data.max_eval_samples=32",
            "--model.optimizer.init_args.lr=0.01"]  # fmt: skip
    main(["fit", "--config", str(config), adapter, *args])

    tokenizer = str(shared_data / "models" / "roberta-base-tokenizer")
    data = TaskDataModule(task="sst2", data_dir=str(shared_data / "glue"), tokenizer=tokenizer,
                          max_length=64, batch_size=16, max_train_samples=96)  # fmt: skip
    data.setup("fit")
    info = data.task_info
    backbone = BackboneConfig(config=SMALL_ROBERTA)

    def fresh():
        return build_classifier(
            backbone, info.num_labels, info.problem_type, info.vocab_size, info.pad_token_id
        )

    from ssmlora_app.adapters import inject_adapters, read_adapter_config

    before = _mean_loss(inject_adapters(fresh(), read_adapter_config(run / "adapter")), data)
    after = _mean_loss(load_adapter(fresh(), run / "adapter"), data)
    assert after < before - 0.05, (before, after)
