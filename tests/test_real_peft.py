"""``peft``'s own methods through the ``peft`` adapter, learning real SST-2 on the real MiniLM
encoder (their zero effect at init, gradients and save -> load on the real model:
tests/test_real_weights.py ``test_peft_adapter_on_real_weights``).

The classifier head trains with every method (peft's ``modules_to_save``), and a trained head on
the frozen encoder alone may already beat the majority class: so each fit also checks that the
method's own tensors moved. How far each method gets beyond the head alone is not claimed here.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from ssmlora_app.adapters import PeftConfig, adapter_state_dict
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.data import TaskDataModule
from ssmlora_app.module import AdapterModule
from tests.helpers import quiet_trainer
from tests.test_real_weights import assert_trains_on_sst2_text

pytestmark = [pytest.mark.real, pytest.mark.slow]

PEFT_SST2 = {
    "ia3": ({"peft_type": "IA3", "target_modules": ["key", "value", "output.dense"],
             "feedforward_modules": ["output.dense"]}, 1e-2),
    "dora": ({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True,
              "target_modules": ["query", "value"]}, 3e-3),
    "adalora": ({"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "lora_alpha": 16,
                 "tinit": 10, "tfinal": 20, "deltaT": 10,
                 "target_modules": ["query", "value"]}, 1e-2),
}  # fmt: skip
"""Each method's ``peft_config`` and learning rate for the short fit (DoRA and AdaLoRA: the HRM
paper's baselines, on LoRA's q,v). AdaLoRA stayed at the majority class at LoRA's 3e-3 in 100
steps (its factors start at N(0, 0.02) with a zero diagonal). Prompt tuning (8 virtual tokens,
lr 3e-2) reached 0.625 in the same 100 steps, short of the bar: not listed (see
docs/results.md)."""


def _sst2(minilm, shared_data, steps: int):
    return TaskDataModule(task="sst2", data_dir=str(shared_data / "glue"), tokenizer=str(minilm),
                          max_length=64, batch_size=16, max_train_samples=steps * 16,
                          max_eval_samples=200, eval_batch_size=100)  # fmt: skip


@pytest.mark.parametrize("name", list(PEFT_SST2))
def test_a_short_peft_fit_on_real_sst2_beats_the_majority_class(minilm, shared_data, name):
    """100 steps of 16: validation accuracy at least 15 points above the majority class, with
    the method's own tensors trained (not the head alone)."""
    torch.manual_seed(0)
    peft_config, lr = PEFT_SST2[name]
    data = _sst2(minilm, shared_data, steps=100)
    assert_trains_on_sst2_text(data, shared_data)
    module = AdapterModule(BackboneConfig(name_or_path=str(minilm)),
                           PeftConfig(peft_config=peft_config),
                           optimizer=partial(torch.optim.AdamW, lr=lr),
                           task_info=data.task_info)  # fmt: skip
    initial = {k: v.clone() for k, v in adapter_state_dict(module.model).items()}
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(module, data)
    accuracy = float(trainer.callback_metrics["val/accuracy"])
    assert accuracy >= data.majority_baseline() + 0.15, (name, accuracy)
    moved = {
        k for k, v in adapter_state_dict(module.model).items() if not torch.equal(v, initial[k])
    }
    method = {k for k in moved if "classifier" not in k}
    assert method, sorted(moved)  # the method's tensors trained, not only the head
