"""The generated addition task: deterministic seeded draws, the sums right, chat rendering."""

import pytest

from ssmlora_app.data import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import AdditionTask, get_task


def test_each_split_is_its_own_seeded_draw_with_the_right_sums():
    task = get_task("addition")
    train, validation = task.load_lm_split("train", None), task.load_lm_split("validation", None)
    assert len(train) == 400 and len(validation) == 100
    for row in train.select(range(20)):
        a, b = (int(n) for n in row["prompt"].removeprefix("What is ").split("?")[0].split(" + "))
        assert 10 <= a <= 99 and 10 <= b <= 99 and row["target"] == str(a + b)
        assert row["references"] == [row["target"]]
    assert task.load_lm_split("train", None)["prompt"] == train["prompt"]  # deterministic
    assert set(train["prompt"][:50]) != set(validation["prompt"][:50])
    assert AdditionTask(seed=1).load_lm_split("train", None)["prompt"] != train["prompt"]


def test_the_data_module_serves_prompts_and_generation_targets():
    data = TaskDataModule(task=AdditionTask(sizes=(("train", 8), ("validation", 4))),
                          objective="causal_lm", max_length=64, batch_size=4)  # fmt: skip
    assert data.task_info.objective == "lm_generate" and data.task_info.metrics[0] == "exact_match"
    data.setup("fit")
    row = data.splits["train"][0]
    text = data.tokenizer.decode(row["input_ids"])
    answer = data.tokenizer.decode([i for i in row["labels"] if i >= 0])
    assert text.startswith("What is ") and text.endswith("number only." + answer)
    assert answer.removesuffix("<eos>").isdigit()


def test_bad_fields_are_refused():
    with pytest.raises(SsmloraError, match=r"needs \{a\} and \{b\}"):
        AdditionTask(prompt="What is the sum?")
    with pytest.raises(SsmloraError, match="digits must be at least 1"):
        AdditionTask(digits=0)
    with pytest.raises(SsmloraError, match="no chat template"):
        TaskDataModule(task=AdditionTask(chat_template=True), objective="causal_lm").setup("fit")
