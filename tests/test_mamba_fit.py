"""Each Mamba method learns in a tiny fit: the quickstart's random-weight Mamba / Mamba-2
(``configs/quickstart_sdt*.yaml``'s shapes) on the in-code sentiment task, with the fit's recipe
(AdamW on the app's parameter groups, linear warm-up and decay); no pretrained Mamba weights exist
offline here. ``ssmlora fit`` itself runs every method in tests/test_adapter_battery.py; the
loop here is in-process to keep the suite fast.

The score head trains beside every adapter and lowers the loss by itself, so each fit is also
scored with its trained head but the adapter put back at its init: the adapter must add to
that. The data is checked too: a training example decodes to words whose majority is its label.
"""

import copy

import pytest
import torch
import yaml

from ssmlora_app.adapters import (
    AdapterConfig,
    AdditionalScanConfig,
    InitialStateConfig,
    LayerFreezeConfig,
    MambaLoRAConfig,
    SSMPrefixConfig,
    StateOffsetConfig,
    adapter_state_dict,
    inject_adapters,
)
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.data import TaskDataModule
from ssmlora_app.optim import LinearWarmupDecay, param_groups
from ssmlora_app.tasks.synthetic import NEGATIVE, POSITIVE
from tests.conftest import REPO

FITS: dict[str, tuple[str, AdapterConfig, float, int]] = {  # quickstart, adapter, lr, epochs
    "init_state": ("quickstart_sdt", InitialStateConfig(conv_state=True), 0.02, 4),
    "state_offset": ("quickstart_sdt", StateOffsetConfig(), 0.02, 4),
    "additional_scan": ("quickstart_sdt", AdditionalScanConfig(), 0.1, 4),
    # prefix-tuning learns slowly on an SSM (the SDLoRA paper's finding): a larger init and lr
    "ssm_prefix": ("quickstart_sdt", SSMPrefixConfig(num_virtual_tokens=4, init_std=1.0), 0.5, 6),
    "layer_freeze": ("quickstart_sdt", LayerFreezeConfig(trainable=["A_log", "x_proj_B", "conv1d"]), 0.02, 4),
    "mamba_dora": ("quickstart_sdt", MambaLoRAConfig(target_modules=["in_proj_x", "x_proj_C", "out_proj"], use_dora=True), 0.02, 4),
    "mamba2_state_offset": ("quickstart_sdt_mamba2", StateOffsetConfig(), 0.02, 4),
    "mamba2_lora_parts": ("quickstart_sdt_mamba2", MambaLoRAConfig(target_modules=["in_proj_x", "in_proj_B", "conv1d"]), 0.02, 4),
}  # fmt: skip


@pytest.fixture(scope="module")
def data() -> TaskDataModule:
    data = TaskDataModule(task="quickstart", max_length=32, batch_size=32, max_train_samples=256,
                          max_eval_samples=8)  # fmt: skip
    data.setup("fit")
    return data


@pytest.fixture(scope="module")
def batches(data) -> list:
    return list(data.train_dataloader())


def mean_loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        losses = [model(**b.inputs, labels=b.labels).loss for b in batches]
    return float(torch.stack(losses).mean())


def train(model, batches, lr: float, epochs: int) -> None:
    """The fit's recipe: AdamW (weight decay 0.01 on matrices), 6 % linear warm-up, then decay."""
    optimizer = torch.optim.AdamW(param_groups(model), lr=lr, weight_decay=0.01)
    schedule = LinearWarmupDecay(optimizer, total_steps=epochs * len(batches), warmup_ratio=0.06)
    model.train()
    for _ in range(epochs):
        for b in batches:
            model(**b.inputs, labels=b.labels).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()


def test_the_training_data_decodes_to_its_labels(data, batches):
    tokenizer = data.tokenizer
    batch = batches[0]
    for ids, mask, label in zip(batch.inputs["input_ids"], batch.inputs["attention_mask"],
                                batch.labels, strict=True):  # fmt: skip
        words = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True).split()
        positive = sum(w in POSITIVE for w in words)
        negative = sum(w in NEGATIVE for w in words)
        assert len(words) >= 6 and int(positive > negative) == int(label), words


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FITS))
def test_a_tiny_fit_lowers_the_loss_beyond_what_the_head_does(name, data, batches):
    quickstart, adapter, lr, epochs = FITS[name]
    config = REPO / "configs" / f"{quickstart}.yaml"
    fields = yaml.safe_load(config.read_text())["model"]["backbone"]["config"]
    info = data.task_info
    torch.manual_seed(0)
    backbone = build_classifier(BackboneConfig(config=fields), info.num_labels, info.problem_type,
                                info.vocab_size, info.pad_token_id)  # fmt: skip
    model = inject_adapters(backbone, copy.deepcopy(adapter))
    initial = copy.deepcopy(model)
    train(model, batches, lr, epochs)
    before, after = mean_loss(initial, batches), mean_loss(model, batches)
    at_init = {k: v for k, v in adapter_state_dict(initial).items() if not k.startswith("score.")}
    loaded = model.load_state_dict(at_init, strict=False)  # trained head, adapter at its init
    assert not loaded.unexpected_keys, loaded.unexpected_keys
    head_only = mean_loss(model, batches)
    assert after < before - 0.03, (before, after)
    assert after < head_only - 0.01, (head_only, after)
