"""Task loaders: real L-Eval and A5 files, generated state tracking, SuperGLUE JSONL, byte LM."""

import csv
import json
import random

import pytest

from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import (
    ByteLMTask,
    DFATask,
    NarrativeQATask,
    ParityTask,
    WordProblemTask,
    get_task,
)
from ssmlora_app.tasks.state_tracking import (
    compose,
    group_elements,
    random_automaton,
    run_automaton,
    running_products,
)

SPLITS = ("train", "validation", "test")


@pytest.mark.parametrize(
    ("task", "documents", "questions"), [("quality", 15, 202), ("qmsum", 20, 177)]
)
def test_leval_files_split_by_document(shared_data, task, documents, questions):
    leval = shared_data / "longctx" / "leval"
    parts = {s: get_task(task).load_lm_split(s, str(leval)) for s in SPLITS}
    docs = {s: set(ds["document"]) for s, ds in parts.items()}
    # L-Eval: QuALITY 15 docs / 202 questions; QMSum 23 lines / 177 questions, 20 distinct
    # transcripts (lines repeating a transcript are merged)
    assert sum(len(d) for d in docs.values()) == documents
    assert sum(len(ds) for ds in parts.values()) == questions
    assert all(docs[s] for s in SPLITS)
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not docs[a] & docs[b], f"a document in {a} and {b}"
    # deterministic
    again = get_task(task).load_lm_split("test", str(leval))
    assert again["prompt"] == parts["test"]["prompt"]


def test_quality_rows_parse_question_and_options(shared_data):
    ds = get_task("quality").load_lm_split("validation", str(shared_data / "longctx" / "leval"))
    for r in ds:
        assert len(r["choices"]) == 4 and 0 <= r["label"] < 4
        assert r["target"] == r["choices"][r["label"]]
        assert r["prompt"].count("\n(") == 4 and r["prompt"].endswith("Answer:")
        assert r["choices"][r["label"]].strip() in r["prompt"]


def test_leval_layout_for_narrativeqa_and_bad_folder(shared_data, tmp_path):
    leval = shared_data / "longctx" / "leval"
    task = NarrativeQATask(file="open-ended/natural_question.jsonl")
    ds = task.load_lm_split("validation", str(leval))
    assert len(ds) > 0 and all(r["references"] for r in ds)
    with pytest.raises(SsmloraError, match=r"narrative_qa\.jsonl"):
        get_task("narrativeqa").check_data_dir(str(tmp_path))


def test_a5_csv_loader(shared_data):
    folder = shared_data / "longctx" / "state_tracking" / "A5_word_problem"
    task = get_task("word_problem_csv")
    parts = {s: task.load_lm_split(s, str(folder)) for s in SPLITS}
    assert [len(parts[s]) for s in SPLITS] == [8000, 1000, 1000]
    prompts = {s: set(parts[s]["prompt"]) for s in SPLITS}
    assert not prompts["train"] & prompts["test"]
    r = parts["train"][0]
    assert len(r["prompt"].split()) == 11 and len(r["target"].split()) == 10
    # the CSV's transitions (previous product, element) -> product form one function (a group)
    table = {}
    with open(folder / "A5=10.csv") as handle:
        for line in csv.DictReader(handle):
            x, y = line["input"].split(), line["target"].split()
            assert y[0] == x[0]
            for prev, g, nxt in zip(y, x[1:], y[1:], strict=False):
                assert table.setdefault((prev, g), nxt) == nxt
    classes = task.load_split("validation", str(folder))
    assert set(classes["label"]) <= set(range(60))


def test_hand_made_automaton():
    # 3-state counter mod 3 on symbol 0, reset to 0 on symbol 1
    table = [[1, 0], [2, 0], [0, 0]]
    assert run_automaton(table, [0, 0, 0, 0, 1, 0]) == [1, 2, 0, 1, 0, 1]
    rng = random.Random(0)
    perm = random_automaton(5, 2, rng, "permutation")
    for a in range(2):
        assert sorted(perm[s][a] for s in range(5)) == list(range(5))


def test_dfa_token_layout_and_known_answer():
    task = DFATask(n_states=4, train_length=12, train_size=20, eval_size=5)
    tok = task.builtin_tokenizer()
    n = 4
    assert tok.convert_tokens_to_ids(["0", "3", "|", "a", "b", "?"]) == [
        0,
        3,
        n,
        n + 1,
        n + 2,
        n + 3,
    ]
    for prompt, target, final in task.examples("train"):
        words = prompt
        assert len(words) == 2 * n + 1 + 12 + 1 and words[2 * n] == "|" and words[-1] == "?"
        table = [[int(words[2 * s + a]) for a in range(2)] for s in range(n)]
        symbols = [ord(w) - ord("a") for w in words[2 * n + 1 : -1]]
        assert run_automaton(table, symbols)[-1] == final == int(target[0])


def test_generators_are_seeded_and_splits_differ():
    args = {"train_length": 8, "eval_lengths": [16], "train_size": 30, "eval_size": 10}
    task = ParityTask(**args)
    assert task.eval_splits == ("validation", "validation_len16")
    assert task.examples("train") == ParityTask(**args).examples("train")
    assert task.examples("validation") != task.examples("test")
    assert task.examples("train") != ParityTask(**{**args, "seed": 1}).examples("train")
    long = task.examples("validation_len16")
    assert all(len(p) == 17 and len(t) == 16 for p, t, _ in long)
    for prompt, target, parity in task.examples("validation"):
        bits = [int(b) for b in prompt[:-1]]
        assert [int(t) for t in target] == [sum(bits[: i + 1]) % 2 for i in range(8)]
        assert parity == sum(bits) % 2


def test_groups():
    assert len(group_elements("S", 4)) == 24 and len(group_elements("A", 5)) == 60
    a5 = set(group_elements("A", 5))
    assert all(compose("A", 5, p, q) in a5 for p in list(a5)[:10] for q in list(a5)[:10])
    assert [x[0] for x in running_products("Z", 7, [(3,), (5,), (6,)])] == [3, 1, 0]
    swap, cycle = (1, 0, 2), (1, 2, 0)
    assert running_products("S", 3, [swap, cycle])[-1] == (2, 1, 0)  # (p·g)[i] = g[p[i]]
    task = WordProblemTask(group="Z", n=5, train_length=6, train_size=5)
    for prompt, target, _final in task.examples("train"):
        values = [int(w[1:]) for w in prompt[:-1]]
        assert [int(w[1:]) for w in target] == [sum(values[: i + 1]) % 5 for i in range(6)]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_superglue_local_original_format(tmp_path):
    write_jsonl(
        tmp_path / "CB" / "val.jsonl",
        [
            {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0},
            {"premise": "q", "hypothesis": "i", "label": "entailment", "idx": 1},
        ],
    )
    cb = get_task("cb")
    assert cb.load_split("validation", str(tmp_path))["label"] == [2, 0]
    lm = cb.load_lm_split("validation", str(tmp_path))
    assert lm[0]["choices"] == [" True", " False", " Neither"] and lm[0]["target"] == " Neither"
    passage = {
        "text": "T",
        "questions": [
            {"question": "Q1", "answers": [{"text": "a", "label": 1}, {"text": "b", "label": 0}]},
            {"question": "Q2", "answers": [{"text": "c", "label": 0}]},
        ],
    }
    write_jsonl(tmp_path / "MultiRC" / "val.jsonl", [{"idx": 0, "passage": passage}])
    multirc = get_task("multirc").load_lm_split("validation", str(tmp_path))
    assert multirc["label"] == [1, 0, 0] and multirc["document"] == ["T"] * 3
    write_jsonl(
        tmp_path / "WSC" / "val.jsonl",
        [{"text": "t", "target": {"span1_text": "A", "span2_text": "it"}, "label": True}],
    )
    assert get_task("wsc").load_split("validation", str(tmp_path))[0]["label"] == 1
    with pytest.raises(SsmloraError, match=r"BoolQ/val\.jsonl"):
        get_task("boolq").check_data_dir(str(tmp_path))


def test_byte_lm_windows(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(bytes(range(256)) * 4)  # 1024 bytes -> 16 windows of 64
    task = ByteLMTask(window=64, fractions=(0.5, 0.25, 0.25))
    parts = {s: task.windows(s, str(corpus)) for s in SPLITS}
    assert [len(parts[s]) for s in SPLITS] == [8, 4, 4]
    assert all(len(w) == 64 for s in SPLITS for w in parts[s])
    assert parts["train"][0] == list(range(64))
    flat = [b for s in SPLITS for w in parts[s] for b in w]
    assert flat == list(bytes(range(256)) * 4)  # contiguous, no overlap, file order
    assert len(task.builtin_tokenizer()) == 256
    with pytest.raises(SsmloraError, match="no validation window"):
        ByteLMTask(window=512).windows("validation", str(corpus))


def _answer(idx, text, label):
    return {"idx": idx, "text": text, "label": label}


MULTIRC_JSONL = [  # the original layout: a passage per line, question ids restart per passage
    {"idx": 0, "passage": {"text": "P0", "questions": [
        {"idx": 0, "question": "Q0", "answers": [_answer(0, "a", True), _answer(1, "b", False)]},
        {"idx": 1, "question": "Q1", "answers": [_answer(2, "c", False)]},
    ]}},
    {"idx": 1, "passage": {"text": "P1", "questions": [
        {"idx": 0, "question": "Q2", "answers": [_answer(0, "d", True)]},
    ]}},
]  # fmt: skip
MULTIRC_HUB = [  # the same in aps/super_glue: a row per answer option
    {"paragraph": "P0", "question": "Q0", "answer": "a", "label": 1,
     "idx": {"paragraph": 0, "question": 0, "answer": 0}},
    {"paragraph": "P0", "question": "Q0", "answer": "b", "label": 0,
     "idx": {"paragraph": 0, "question": 0, "answer": 1}},
    {"paragraph": "P0", "question": "Q1", "answer": "c", "label": 0,
     "idx": {"paragraph": 0, "question": 1, "answer": 2}},
    {"paragraph": "P1", "question": "Q2", "answer": "d", "label": 1,
     "idx": {"paragraph": 1, "question": 0, "answer": 0}},
]  # fmt: skip


def test_multirc_records_carry_their_question_from_both_layouts(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "MultiRC" / "val.jsonl", MULTIRC_JSONL)
    monkeypatch.setattr(
        "ssmlora_app.tasks.superglue.datasets.load_dataset",
        lambda hub_id, config, split: [dict(r) for r in MULTIRC_HUB],
    )
    task = get_task("multirc")
    assert task.grouped and not get_task("boolq").grouped
    assert task.metrics == ("f1", "accuracy", "exact_match") == task.lm_metrics
    for data_dir in (str(tmp_path), None):  # the original JSONL, then the (stubbed) hub
        records = task.records("validation", data_dir)
        assert [r["idx"] for r in records] == [r["idx"] for r in MULTIRC_HUB]
        assert [r["group"] for r in records] == [0, 0, 1, 2]  # one per (paragraph, question)
        classification = task.load_split("validation", data_dir)
        assert classification["group"] == [0, 0, 1, 2] and classification["label"] == [1, 0, 0, 1]
        lm = task.load_lm_split("validation", data_dir)
        assert lm["group"] == [0, 0, 1, 2] and lm["label"] == [1, 0, 0, 1]
    # lines without idx fields: the line numbers the passage, the position its questions
    bare = {"passage": {"text": "T", "questions": [
        {"question": "Q", "answers": [{"text": "x", "label": 0}, {"text": "y", "label": 1}]},
        {"question": "R", "answers": [{"text": "z", "label": 1}]},
    ]}}  # fmt: skip
    write_jsonl(tmp_path / "MultiRC" / "val.jsonl", [bare, bare])
    assert task.load_split("validation", str(tmp_path))["group"] == [0, 0, 1, 2, 2, 3]


@pytest.mark.parametrize("objective", ["classification", "causal_lm"])
def test_multirc_evaluation_batches_carry_the_group_ids(tmp_path, objective):
    write_jsonl(tmp_path / "MultiRC" / "val.jsonl", MULTIRC_JSONL)
    data = TaskDataModule("multirc", str(tmp_path), objective=objective, eval_batch_size=3)
    assert data.task_info.grouped
    data.setup("validate")
    batches = list(data.val_dataloader()[0])
    assert [b.groups.tolist() for b in batches] == [[0, 0, 1], [2]]  # question 2 in batch 2
    labels = "labels" if objective == "classification" else "gold"
    assert [getattr(b, labels).tolist() for b in batches] == [[1, 0, 0], [1]]
