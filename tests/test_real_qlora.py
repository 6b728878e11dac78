"""QLoRA on the real SmolLM2 decoder: its backbone loaded in 4 bits (bitsandbytes' CPU kernels,
``allow_cpu``) answers the addition prompts in sentences (exact match 0), and 10 steps of LoRA on
top teach it the answer format. Equality with LoRA on the dequantised weights, the gradients, an
evaluation pass between training steps and the save/load and peft round trips are checked on a
tiny Llama in tests/test_qlora.py."""

from __future__ import annotations

import importlib.util
from functools import partial

import pytest
import torch

from ssmlora_app.adapters import QLoRAConfig
from ssmlora_app.adapters.inject import count_parameters
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.data import TaskDataModule
from ssmlora_app.module import AdapterModule
from ssmlora_app.tasks import AdditionTask
from tests.helpers import quiet_trainer
from tests.test_real_addition import assert_trains_on_chat_sums

pytestmark = [
    pytest.mark.real,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                       reason="needs bitsandbytes (pip install -e '.[dev]')"),
]  # fmt: skip

ADDITION = AdditionTask(chat_template=True, sizes=(("train", 10 * 8), ("validation", 16),
                                                  ("test", 16)))  # fmt: skip


def test_qlora_on_the_real_4bit_decoder_learns_the_addition_format(smollm2):
    data = TaskDataModule(task=ADDITION, objective="causal_lm", tokenizer=str(smollm2),
                          max_length=64, batch_size=8, eval_batch_size=16)  # fmt: skip
    assert_trains_on_chat_sums(data)
    config = QLoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"], allow_cpu=True,
                         compute_dtype="float32")  # fmt: skip
    module = AdapterModule(BackboneConfig(name_or_path=str(smollm2)), config,
                           optimizer=partial(torch.optim.AdamW, lr=3e-3),
                           task_info=data.task_info)  # fmt: skip
    q_proj = module.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.dtype == torch.uint8
    # SmolLM2's 134.5 M weights, counted as weights, not as the bytes that pack two each.
    assert count_parameters(module.model) == 134_515_008 + 460_800
    trainer = quiet_trainer(max_epochs=1)
    before = trainer.validate(module, data, verbose=False)[0]
    assert before["val/exact_match"] == 0.0, before  # the instruct model writes sentences
    trainer.fit(module, data)
    after = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert after["val/exact_match"] >= 0.25, (before, after)  # 5 of 16 here
    assert after["val/loss"] < before["val/loss"] / 2, (before, after)
