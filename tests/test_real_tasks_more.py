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

import pytest
import torch

from ssmlora_app.adapters import LoRAConfig
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.data import TaskDataModule
from ssmlora_app.module import AdapterModule
from ssmlora_app.objectives.multiple_choice import option_text
from tests.helpers import lora_fit_before_after, quiet_trainer, wordpiece_letters

pytestmark = [pytest.mark.real, pytest.mark.slow]


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
            assert wordpiece_letters(record["context"]).startswith(
                wordpiece_letters(first)
            ) and wordpiece_letters(first)
            assert wordpiece_letters(second) == wordpiece_letters(
                option_text(record["question"], choice)
            )


def _capture_answers(monkeypatch, module) -> list[str]:
    """The list every answer the module's objective generates from now on is appended to."""
    answers: list[str] = []
    generate = module.objective.generate_text

    def spy(*args, **kwargs):
        answers.extend(out := generate(*args, **kwargs))
        return out

    monkeypatch.setattr(module.objective, "generate_text", spy)
    return answers


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

    before, after = lora_fit_before_after(str(minilm), data, lr=3e-3, steps=40)
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

    Not claimed: unseen questions (not tried, docs/results.md). At 128 tokens the same fit takes
    1.7 s a step here, so the test cuts the articles to 64."""
    torch.manual_seed(0)
    data = TaskDataModule(task="race", data_dir=str(race_articles), tokenizer=str(minilm),
                          max_length=64, batch_size=4, eval_batch_size=16)  # fmt: skip
    data.setup("fit")
    train = data.splits["train"]
    raw = data.objective.load_split(data.task, "train", str(race_articles))
    assert len(train) == len(raw) == 16 and sorted(set(raw["level"])) == ["high", "middle"]
    _choices_decode_to(data, [train[i] for i in range(16)], list(raw))

    before, after = lora_fit_before_after(str(minilm), data, lr=1e-2, steps=30)
    assert before["val/loss"] == pytest.approx(1.386, abs=0.01), before  # ln 4: a fresh head
    assert after["val/accuracy"] >= 0.625, (before, after)  # 10 of 16; chance gives 4
    assert after["val/loss"] < before["val/loss"] - 0.3, (before, after)


# ---- Spider on SmolLM2 ----------------------------------------------------------------------

SPIDER_TRAIN_DATABASES = ("course_teach", "flight_2", "network_1", "pets_1", "poker_player")
"""Small schemas (prompts under 192 tokens); the scored questions' database (singer) is not
among them."""
SPIDER_SCORED = (1000, 1004, 1006)
"""Three short dev questions on ``singer`` (count, two columns, a WHERE)."""


@pytest.fixture(scope="module")
def spider_folder(shared_data, tmp_path_factory):
    """A Spider folder: the dev questions of five small databases as ``train_spider.json``
    (the task's "tvt" train / validation), three dev questions of another as ``dev.json`` (its
    test split), the real ``tables.json`` and databases."""
    spider = shared_data / "spider"
    dev = json.loads((spider / "dev.json").read_text())
    root = tmp_path_factory.mktemp("spider")
    train = [q for q in dev if q["db_id"] in SPIDER_TRAIN_DATABASES]
    (root / "train_spider.json").write_text(json.dumps(train))
    (root / "dev.json").write_text(json.dumps([dev[i] for i in SPIDER_SCORED]))
    for name in ("tables.json", "database"):
        (root / name).symlink_to(spider / name)
    return root


def test_spider_on_smollm2_prompts_scores_and_a_short_fit_teaches_the_sql_format(
    smollm2, spider_folder, monkeypatch
):
    """The prompt is the benchmark's (prefix, ``###Question: …\\Schema: <tables.json schema>``,
    ``###``), the loss covers the gold SQL and EOS only; 8 LoRA steps of 2 on questions of other
    databases lower the held-out target loss (measured 4.43 -> 2.07) and teach the SQL format:
    the untrained model's greedy answers start ``Question`` (all three, measured), the fitted
    one's with ``SELECT``. The logged exact set match and execution accuracy of those greedy answers are
    the official evaluator's for them (its reproduction, ``ssmlora_app.scoring.spider``, run
    directly; an answer SQLite cannot run scores no execution match, one equal to the gold
    scores both).

    Not claimed: right SQL. The three answers measured 0 on both metrics: SELECT statements on
    tables the schema does not have (``SELECT SUM(SALES) FROM SALES``), which SQLite cannot run."""
    import sqlite3

    from ssmlora_app.scoring.spider import LEVELS, evaluate
    from ssmlora_app.tasks import SpiderTask
    from ssmlora_app.tasks.spider import PROMPT, schema_text

    torch.manual_seed(0)
    data = TaskDataModule(task=SpiderTask(), data_dir=str(spider_folder), objective="causal_lm",
                          tokenizer=str(smollm2), max_length=192, batch_size=2,
                          max_train_samples=40, eval_batch_size=4, max_new_tokens=24)  # fmt: skip
    data.setup("fit")
    data.setup("test")
    tokenizer = data.tokenizer
    tables = {s["db_id"]: s for s in json.loads((spider_folder / "tables.json").read_text())}
    questions = json.loads((spider_folder / "train_spider.json").read_text())
    gold = {f"{PROMPT}###Question: {q['question']}\\Schema: {schema_text(tables[q['db_id']])}\n###":
            q["query"].strip() for q in questions}  # fmt: skip
    for row in data.splits["train"]:
        prompt = tokenizer.decode(row["prompt_ids"], skip_special_tokens=True)
        target = [i for i in row["labels"] if i >= 0]
        assert row["input_ids"] == row["prompt_ids"] + target and prompt in gold, prompt
        if target[-1] == tokenizer.eos_token_id:  # the gold SQL and EOS
            assert tokenizer.decode(target[:-1]) == gold[prompt]
        else:  # a long query, cut at the answer room (data.max_new_tokens)
            assert len(target) == 24 and gold[prompt].startswith(tokenizer.decode(target))

    scored = json.loads((spider_folder / "dev.json").read_text())
    batch = next(iter(data.test_dataloader()[0]))
    assert [r[0] for r in batch.references] == [f"{q['query']}\t{q['db_id']}" for q in scored]
    for ids, n, q in zip(batch.prompts.ids, batch.prompts.lengths, scored, strict=True):
        prompt = tokenizer.decode(ids[:n], skip_special_tokens=True)  # what generation continues
        assert prompt.startswith(PROMPT) and prompt.endswith("\n###"), prompt
        assert q["question"] in prompt and schema_text(tables["singer"]) in prompt

    module = AdapterModule(BackboneConfig(name_or_path=str(smollm2)),
                           LoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]),
                           optimizer=partial(torch.optim.AdamW, lr=3e-3),
                           task_info=data.task_info)  # fmt: skip
    module.objective.attach(tokenizer)

    def held_out() -> tuple[float, list[str]]:
        """The target loss of the scored questions and each prompt's greedy first token."""
        module.model.eval()
        with torch.no_grad():
            nll, _, tokens = module.objective.target_stats(module.model, batch)
            firsts = [tokenizer.decode(module.model(input_ids=ids[None, :n]).logits[0, -1].argmax())
                      for ids, n in zip(batch.prompts.ids, batch.prompts.lengths, strict=True)]  # fmt: skip
        return float(nll.sum() / tokens.sum()), firsts

    loss_before, firsts = held_out()
    assert not any(f.strip().upper().startswith("SEL") for f in firsts), firsts
    quiet_trainer(max_steps=8, max_epochs=-1, limit_val_batches=0).fit(module, data)
    loss_after, _ = held_out()
    assert loss_after < loss_before - 1.0, (loss_before, loss_after)

    answers = _capture_answers(monkeypatch, module)
    metrics = quiet_trainer().test(module, data, verbose=False)[0]
    assert len(answers) == 3
    assert sum(a.lstrip().upper().startswith("SELECT") for a in answers) >= 2, answers
    triples = [(a, q["query"], q["db_id"]) for a, q in zip(answers, scored, strict=True)]
    official = evaluate(triples, spider_folder / "database", spider_folder / "tables.json")
    assert official["count"]["all"] == 3 and not official["skipped"]
    for level in (*LEVELS, "all"):
        suffix = "" if level == "all" else f"_{level}"
        for name, key in (("exact_set_match", "exact"), ("execution_accuracy", "exec")):
            value = metrics[f"test/{name}{suffix}"]
            assert 0.0 <= value <= 1.0 and value == pytest.approx(official[key][level]), name
    path = spider_folder / "database" / "singer" / "singer.sqlite"
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for (answer, query, _), result in zip(triples, official["results"], strict=True):
            if answer.strip() == query.strip():
                assert result.exact and result.execution
            try:
                connection.execute(answer).fetchall()
            except (sqlite3.Error, sqlite3.Warning, ValueError):
                assert not result.execution, answer
    finally:
        connection.close()


# ---- L-Eval's exam files on SmolLM2 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "kind", "new_tokens"),
    [("gsm100", "number", 16), ("quality", "letters", 6), ("sci_fi", "judge", 8),
     ("topic_retrieval_longchat", "text", 12)],
)  # fmt: skip
def test_leval_exam_files_on_smollm2_keep_the_question_and_score_greedy_answers(
    smollm2, shared_data, monkeypatch, file, kind, new_tokens
):
    """Each layout through ``leval_exam`` on the real tokenizer, at 384 tokens: the prompt the
    model continues is the document's beginning and end (cut in the middle, the long part) then
    ``Question: <instruction, options included>\\nAnswer:`` whole; two greedy answers each, whose
    logged ``exam_score`` / ``exam_correct`` are L-Eval's scores of them (its scorer run
    directly). The untrained SmolLM2 at 384 tokens of context is not expected to answer them;
    measured: QuALITY 0.5 (an empty answer, then ``A``, right), GSM, sci-fi, topic retrieval 0
    (``125 - 2 = 125\nThe answer is``; ``7.\tThe most important thing``; empty answers)."""
    from ssmlora_app.scoring.leval import exam_score as letters_score
    from ssmlora_app.scoring.leval import gold_letters, response_letters
    from ssmlora_app.scoring.leval_answers import answer_score
    from ssmlora_app.tasks import LEvalExamTask

    root = shared_data / "longctx" / "leval"
    # topic retrieval's outputs are free text: the one layout the task cannot tell by itself
    answer = "text" if kind == "text" else "auto"
    task = LEvalExamTask(file=f"closed-ended/{file}.jsonl", answer=answer)
    data = TaskDataModule(task=task, data_dir=str(root), objective="causal_lm",
                          tokenizer=str(smollm2), max_length=384, max_eval_samples=2,
                          eval_batch_size=2, max_new_tokens=new_tokens)  # fmt: skip
    assert data.task_info.metric_options["answer"] == kind
    data.setup("validate")
    tokenizer = data.tokenizer
    docs = [json.loads(line) for line in (root / task.file).read_text().splitlines()]
    questions = [  # (prompt tail, document, output); topic retrieval's questions repeat
        (f"\n\n{t if t.startswith('Question') else f'Question: {t}'}\nAnswer:", doc["input"], o)
        for doc in docs
        for t, o in zip(map(str.strip, doc["instructions"]), doc["outputs"], strict=True)
    ]
    batch = next(iter(data.val_dataloader()[0]))
    outputs = []
    for ids, n, refs in zip(batch.prompts.ids, batch.prompts.lengths, batch.references,
                            strict=True):  # fmt: skip
        prompt = tokenizer.decode(ids[:n], skip_special_tokens=True)
        assert n <= 384 - new_tokens
        # the question is whole after the document's beginning and end (cut in the middle)
        found = [(tail, document, output) for tail, document, output in questions
                 if prompt.endswith(tail) and document.startswith(prompt[:200])
                 and document.endswith(prompt[: -len(tail)][-100:])
                 and len(prompt) - len(tail) < len(document)]  # fmt: skip
        assert refs[0] in [output for *_, output in found], prompt[:200]
        assert refs == [refs[0]]
        outputs.append(refs[0])

    module = AdapterModule(BackboneConfig(name_or_path=str(smollm2)),
                           LoRAConfig(target_modules=["q_proj", "v_proj"]),
                           task_info=data.task_info)  # fmt: skip
    answers = _capture_answers(monkeypatch, module)
    metrics = quiet_trainer().validate(module, data, verbose=False)[0]
    assert len(answers) == 2  # may be empty: on topic retrieval SmolLM2 says EOS at once
    if kind == "letters":
        multiple = data.task_info.metric_options["multiple"]
        scores = [letters_score(response_letters(a, multiple), gold_letters(o))
                  for a, o in zip(answers, outputs, strict=True)]  # fmt: skip
    else:
        scores = [answer_score(a, o, kind) for a, o in zip(answers, outputs, strict=True)]
    assert metrics["val/exam_score"] == pytest.approx(sum(scores) / 2)
    assert metrics["val/exam_correct"] == pytest.approx(sum(s == 1.0 for s in scores) / 2)
