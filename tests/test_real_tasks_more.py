"""More of the papers' tasks on real pretrained weights and real data: COPA and a RACE fit on the
MiniLM encoder, Spider and L-Eval's exam files on the SmolLM2 decoder (tests/test_real_tasks.py
has SQuAD, the RACE pipeline and DART).

As there, each test first checks what the model reads (decoded inputs are the files' text, the
labels point at the gold answer), then what comes out of the task's own metric. The fits are a
few steps on a shared CPU, so each claims only what a few steps can show, against a baseline a
broken pipeline could not beat.
"""

from __future__ import annotations

import json
import shutil
from functools import partial

import lightning as L
import pytest
import torch

from ssmlora_app.adapters import LoRAConfig
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.data import TaskDataModule
from ssmlora_app.module import AdapterModule
from ssmlora_app.objectives.multiple_choice import option_text

pytestmark = [pytest.mark.real, pytest.mark.slow]


def _trainer(**kwargs):
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kwargs)  # fmt: skip


def _letters(text: str) -> str:
    """What an uncased WordPiece round trip keeps of a text (lower-case letters and digits)."""
    return "".join(c for c in text.lower() if c.isalnum())


def _choices_decode_to(data, rows: list[dict], records: list[dict]) -> None:
    """Each option of each encoded row decodes to ``[CLS] context [SEP] question option [SEP]``
    of its record (the context cut at its end when too long), and its label is the record's."""
    tokenizer = data.tokenizer
    batch = data.eval_collator(rows)
    for b, record in enumerate(records):
        assert int(batch.labels[b]) == record["label"]
        for k, choice in enumerate(record["choices"]):
            ids = batch.inputs["input_ids"][b, k].tolist()
            assert ids[0] == tokenizer.cls_token_id and ids.count(tokenizer.sep_token_id) == 2
            first, second = tokenizer.decode(ids[1:]).split(tokenizer.sep_token)[:2]
            assert _letters(record["context"]).startswith(_letters(first)) and _letters(first)
            assert _letters(second) == _letters(option_text(record["question"], choice))


# ---- COPA on MiniLM (multiple_choice) -------------------------------------------------------


@pytest.fixture(scope="module")
def copa_trained(shared_data, tmp_path_factory):
    """COPA val (the only COPA split here): its first 60 questions as the training file, also
    scored (as ``val.jsonl`` of the same folder); and those 60 records."""
    lines = (shared_data / "superglue" / "COPA" / "val.jsonl").read_text().splitlines()
    assert len(lines) == 100
    root = tmp_path_factory.mktemp("copa")
    for name in ("train.jsonl", "val.jsonl"):
        (root / name).write_text("\n".join(lines[:60]) + "\n")
    return root, [json.loads(line) for line in lines[:60]]


def test_a_short_lora_fit_of_minilm_learns_its_copa_questions(minilm, copa_trained):
    """What it trains on: each of a question's two options is ``[CLS] premise [SEP] question
    choice [SEP]`` (``What was the cause?`` / ``What happened as a result?``), the label the
    gold choice's index. 40 LoRA steps of 8 on 60 COPA questions lift the model's accuracy on
    those questions from a fresh head's ~0.5 to >= 0.85 (measured 0.60 -> 0.97): with two
    options, a pipeline whose scores do not reach the options or whose labels are not tied to
    them stays near 0.5.

    Not claimed: accuracy on unseen questions. On the other 40 it stayed at chance (0.43 ->
    0.45, measured; 80 trained / 20 held out reached 0.75 once, too few to assert)."""
    trained, records = copa_trained
    torch.manual_seed(0)
    options = dict(task="copa", objective="multiple_choice", tokenizer=str(minilm),
                   max_length=48, batch_size=8, eval_batch_size=64)  # fmt: skip
    data = TaskDataModule(data_dir=str(trained), **options)
    data.setup("fit")
    train = data.splits["train"]
    assert len(train) == 60
    choice_records = [
        {"context": r["premise"], "choices": [r["choice1"], r["choice2"]], "label": r["label"],
         "question": "What was the cause?" if r["question"] == "cause"
         else "What happened as a result?"}
        for r in records
    ]  # fmt: skip
    _choices_decode_to(data, [train[i] for i in range(60)], choice_records)
    assert 0.3 < sum(r["label"] for r in choice_records) / 60 < 0.7  # both options are gold

    module = AdapterModule(BackboneConfig(name_or_path=str(minilm)),
                           LoRAConfig(r=8, alpha=16, target_modules=["query", "value"]),
                           optimizer=partial(torch.optim.AdamW, lr=3e-3),
                           task_info=data.task_info)  # fmt: skip
    before = _trainer().validate(module, data, verbose=False)[0]
    _trainer(max_steps=40, max_epochs=-1).fit(module, data)
    after = _trainer().validate(module, data, verbose=False)[0]
    assert before["val/accuracy"] <= 0.7, before
    assert after["val/accuracy"] >= 0.85, (before, after)
    assert after["val/loss"] < before["val/loss"], (before, after)


# ---- RACE: a short fit on MiniLM ------------------------------------------------------------


@pytest.fixture(scope="module")
def race_articles(shared_data, tmp_path_factory):
    """The first two dev articles of each level (16 questions) as both the training and the dev
    split, in RACE's original layout."""
    dev = shared_data / "race" / "RACE" / "dev"
    root = tmp_path_factory.mktemp("race")
    for level in ("middle", "high"):
        files = sorted((dev / level).glob("*.txt"), key=lambda p: (len(p.stem), p.stem))[:2]
        for split in ("train", "dev"):
            (root / split / level).mkdir(parents=True)
            for path in files:
                shutil.copy(path, root / split / level / path.name)
    return root


def test_a_short_lora_fit_of_minilm_learns_its_race_questions(minilm, race_articles):
    """What it trains on: four sequences per question, each the article (cut to fit 64 tokens)
    and the question with one option, the gold option's index as the label. 30 LoRA steps of 4
    at lr 1e-2 teach the real model those 16 questions (measured: accuracy 0.375 -> 0.75, loss
    1.386 -> 0.67), far above the 25% of four options, which a pipeline whose labels are not
    the gold options or whose scores do not reach them would stay near.

    Not claimed: unseen questions (a short CPU fit does not leave RACE's 25%, docs/results.md);
    at 128 tokens the same fit takes 1.7 s a step here, so the test cuts the articles to 64."""
    torch.manual_seed(0)
    data = TaskDataModule(task="race", data_dir=str(race_articles), tokenizer=str(minilm),
                          max_length=64, batch_size=4, eval_batch_size=16)  # fmt: skip
    data.setup("fit")
    train = data.splits["train"]
    raw = data.objective.load_split(data.task, "train", str(race_articles))
    assert len(train) == len(raw) == 16 and sorted(set(raw["level"])) == ["high", "middle"]
    _choices_decode_to(data, [train[i] for i in range(16)], list(raw))

    module = AdapterModule(BackboneConfig(name_or_path=str(minilm)),
                           LoRAConfig(r=8, alpha=16, target_modules=["query", "value"]),
                           optimizer=partial(torch.optim.AdamW, lr=1e-2),
                           task_info=data.task_info)  # fmt: skip
    before = _trainer().validate(module, data, verbose=False)[0]
    _trainer(max_steps=30, max_epochs=-1).fit(module, data)
    after = _trainer().validate(module, data, verbose=False)[0]
    assert before["val/loss"] == pytest.approx(1.386, abs=0.01), before  # ln 4: a fresh head
    assert after["val/accuracy"] >= 0.625, (before, after)  # 10 of 16; chance gives 4
    assert after["val/loss"] < before["val/loss"] - 0.3, (before, after)
