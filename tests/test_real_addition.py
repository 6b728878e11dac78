"""SmolLM2-135M-Instruct learning two-digit addition through its chat template
(``What is 37 + 58? Answer with the number only.`` -> ``95``), scored by greedy generation: the
untrained instruct model answers in sentences (exact match 0), a short fit of each decoder adapter
teaches it the format. (QLoRA on the same task: tests/test_real_qlora.py.)"""

import re
from functools import partial

import pytest
import torch

from ssmlora_app.adapters import LoRAConfig
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.data import TaskDataModule
from ssmlora_app.module import AdapterModule
from ssmlora_app.tasks import AdditionTask
from tests.helpers import quiet_trainer
from tests.test_real_weights import DECODER_ADAPTERS

pytestmark = [pytest.mark.real, pytest.mark.slow]


ADDITION_RECIPE = {"lora": (3e-3, 15), "ssmlora_full_model": (5e-4, 30),
                   "ssmlora_attention_sparse": (3e-3, 15), "hrm": (1e-2, 30)}  # fmt: skip
"""Learning rate and steps (of 8) of the short SmolLM2 fits. Measured exact match on the 24
validation sums: LoRA and SSMLoRA ``attention_sparse`` 0.62 after 15 steps; SSMLoRA
``full_model`` (0.75) and HRM (0.42) need 30 (after 15-20 steps, at up to 3x these rates:
0.00 and 0.12-0.21)."""


def _addition_data(smollm2, steps: int = 30):
    """Two-digit addition through SmolLM2's chat template: ``steps`` batches of 8 to train, 24
    sums to score."""
    task = AdditionTask(chat_template=True, sizes=(("train", steps * 8), ("validation", 24),
                                                   ("test", 24)))  # fmt: skip
    return TaskDataModule(task=task, objective="causal_lm", tokenizer=str(smollm2),
                          max_length=64, batch_size=8, eval_batch_size=24)  # fmt: skip


def assert_trains_on_chat_sums(data) -> None:
    """What a fit of ``data`` trains on: each training row is the chat-formatted question
    followed by the sum and the end of the turn, and only those tokens are targets."""
    data.setup("fit")
    for row in data.splits["train"].select(range(8)):
        text = data.tokenizer.decode(row["input_ids"])
        answer = data.tokenizer.decode([i for i in row["labels"] if i >= 0])
        question = re.search(r"What is (\d+) \+ (\d+)\?", text)
        assert "<|im_start|>user\n" in text and question, text
        assert text.endswith("<|im_start|>assistant\n" + answer), text
        assert answer == f"{int(question[1]) + int(question[2])}<|im_end|>", (text, answer)


def test_the_untrained_decoder_answers_the_addition_prompts_in_sentences(smollm2):
    """Before training (every adapter starts at, or next to, the frozen model): exact match 0,
    since the instruct model writes sentences."""
    data = _addition_data(smollm2)
    assert_trains_on_chat_sums(data)
    frozen = AdapterModule(BackboneConfig(name_or_path=str(smollm2)), LoRAConfig(
        target_modules=["q_proj"]), task_info=data.task_info)  # fmt: skip
    metrics = quiet_trainer().validate(frozen, data, verbose=False)[0]
    assert metrics["val/exact_match"] == 0.0, metrics


@pytest.mark.parametrize("name", list(DECODER_ADAPTERS))
def test_a_short_fit_teaches_the_real_decoder_the_addition_format(smollm2, name):
    """15 or 30 steps of 8 (ADDITION_RECIPE) through SmolLM2's chat template, scored by greedy
    generation of 24 sums."""
    lr, steps = ADDITION_RECIPE[name]
    data = _addition_data(smollm2, steps)
    assert_trains_on_chat_sums(data)
    module = AdapterModule(BackboneConfig(name_or_path=str(smollm2)), DECODER_ADAPTERS[name](),
                           optimizer=partial(torch.optim.AdamW, lr=lr),
                           task_info=data.task_info)  # fmt: skip
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(module, data)
    after = float(trainer.callback_metrics["val/exact_match"])
    assert after >= 0.25, (name, after)  # untrained: 0.00 (the test above)
