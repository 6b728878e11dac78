"""GLUE readers (original TSV layouts, quoting off), the data module, metrics."""

import csv

import pytest
import torch

from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.data.samplers import EpochShuffleSampler, ShardSampler
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import TASKS, get_task
from ssmlora_app.tasks.metrics import build_metrics

# One tiny file per task, in the original GLUE layout: (folder, file, header or None, rows).
LAYOUTS = {
    "cola": ("CoLA", "dev.tsv", None, [["gj04", "1", "", 'He said "hi".'], ["gj04", "0", "*", "Him went."]]),
    "sst2": ("SST-2", "dev.tsv", ["sentence", "label"], [['a "quoted" gem', "1"], ["dull", "0"]]),
    "mrpc": ("MRPC", "dev.tsv", ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             [["1", "1", "2", 'He said " yes "', "Yes ."], ["0", "3", "4", "A", "B"]]),
    "qqp": ("QQP", "dev.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [["0", "1", "2", "Why?", "How?", "0"], ["1", "3", "4", "Who?", "Who?", "1"]]),
    "stsb": ("STS-B", "dev.tsv", ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
             [["0", "g", "f", "y", "0", "s", "s", "A man.", "A man!", "5.000"], ["1", "g", "f", "y", "1", "s", "s", "X", "Y", "0.5"]]),
    "mnli": ("MNLI", "dev_matched.tsv", ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1", "gold_label"],
             [["0", "1", "1", "g", "P.", "H.", "neutral", "neutral"], ["1", "2", "2", "g", "P2", "H2", "contradiction", "contradiction"]]),
    "qnli": ("QNLI", "dev.tsv", ["index", "question", "sentence", "label"],
             [["0", "Q?", "S.", "entailment"], ["1", "Q2?", "S2.", "not_entailment"]]),
    "rte": ("RTE", "dev.tsv", ["index", "sentence1", "sentence2", "label"],
            [["0", "A.", "B.", "not_entailment"], ["1", "C.", "D.", "entailment"]]),
    "wnli": ("WNLI", "dev.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "A.", "B.", "1"], ["1", "C.", "D.", "0"]]),
}  # fmt: skip
EXPECTED_LABELS = {"cola": [1, 0], "sst2": [1, 0], "mrpc": [1, 0], "qqp": [0, 1], "stsb": [5.0, 0.5],
                   "mnli": [1, 2], "qnli": [0, 1], "rte": [1, 0], "wnli": [1, 0]}  # fmt: skip


def write_glue(root, task):
    folder, name, header, rows = LAYOUTS[task]
    path = root / folder
    path.mkdir(parents=True, exist_ok=True)
    files = [name, "dev_mismatched.tsv"] if task == "mnli" else [name]
    for file in [*files, "train.tsv"]:
        with open(path / file, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(
                f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar=None
            )
            if header:
                writer.writerow(header)
            writer.writerows(rows)
    return root


def test_all_nine_glue_tasks_are_known():
    assert {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"} <= set(TASKS)


@pytest.mark.parametrize("task", list(LAYOUTS))
def test_local_glue_layouts(tmp_path, task):
    spec = get_task(task)
    root = write_glue(tmp_path, task)
    split = spec.eval_splits[0]
    for data_dir in (root, root / LAYOUTS[task][0]):  # the GLUE root or the task folder
        ds = spec.load_split(split, str(data_dir))
        assert ds["label"] == pytest.approx(EXPECTED_LABELS[task])
        assert all(isinstance(t, str) and t for t in ds["text_a"])
        if task in ("cola", "sst2"):
            assert ds["text_b"] == [None, None]
        else:
            assert all(isinstance(t, str) and t for t in ds["text_b"])
    if task in ("cola", "sst2", "mrpc"):  # quotes survive: quoting is off
        assert '"' in ds["text_a"][0]


def test_unknown_task():
    with pytest.raises(SsmloraError, match=r"Unknown task 'sst3'.*sst2"):
        TaskDataModule(task="sst3")


def test_missing_files_are_reported_before_training(tmp_path):
    with pytest.raises(SsmloraError, match=r"has no sst2 files: expected .*dev\.tsv"):
        TaskDataModule(task="sst2", data_dir=str(tmp_path), tokenizer=None)


def test_glue_needs_a_tokenizer(tmp_path):
    root = write_glue(tmp_path, "rte")
    with pytest.raises(SsmloraError, match="needs a tokenizer"):
        TaskDataModule(task="rte", data_dir=str(root))


def test_real_glue_files(shared_data):
    counts = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qnli": 5463}
    for task, n in counts.items():
        ds = get_task(task).load_split("validation", str(shared_data / "glue"))
        assert len(ds) == n, task
    train = get_task("mrpc").load_split("train", str(shared_data / "glue"))
    assert len(train) == 3668 and sum(train["label"]) == 2474


def test_data_module_tokenises_and_pads_per_batch():
    dm = TaskDataModule(task="quickstart", batch_size=8, max_train_samples=64, max_length=12)
    assert dm.task_info.num_labels == 2 and dm.task_info.vocab_size == len(dm.tokenizer)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 64
    batch = next(iter(dm.train_dataloader()))
    lengths = batch.inputs["attention_mask"].sum(-1)
    assert batch.inputs["input_ids"].shape[1] == lengths.max() <= 12  # padded to the longest only
    assert set(batch.inputs) == {"input_ids", "attention_mask"} and batch.labels.shape == (8,)
    assert 0.3 < dm.majority_baseline() < 0.7


def test_synthetic_task_is_deterministic():
    task = get_task("quickstart")
    assert task.load_split("train", None)[:5] == task.load_split("train", None)[:5]
    assert (
        task.load_split("train", None)["text_a"][:5]
        != task.load_split("validation", None)["text_a"][:5]
    )


def test_epoch_shuffle_is_a_function_of_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=3), EpochShuffleSampler(50, seed=3)
    first = list(a)
    a.set_epoch(1)
    assert sorted(first) == list(range(50)) and list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_accuracy_is_micro_not_macro():
    metrics = build_metrics(("accuracy",), 3, "val")
    preds, labels = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 0, 2])
    assert metrics(preds, labels)["val/accuracy"] == pytest.approx(0.8)  # macro would be 1/3


def test_metric_sets_per_task():
    assert get_task("cola").metrics[0] == "mcc"
    assert (
        get_task("stsb").metrics[:2] == ("pearson", "spearman") and get_task("stsb").is_regression
    )
    assert set(get_task("mrpc").metrics) == {"accuracy", "f1"}
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    values = build_metrics(("pearson", "spearman"), 1, "val")(
        torch.tensor([0.1, 0.5, 0.9]), torch.tensor([1.0, 2.0, 4.0])
    )
    assert values["val/spearman"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("size", "world"), [(64, 2), (70, 2), (65, 4), (61, 4)])
def test_ranks_see_the_single_process_global_batches(size, world):
    batch = 4
    single = list(EpochShuffleSampler(size, seed=5, batch_size=batch * world))
    ranks = [
        list(EpochShuffleSampler(size, seed=5, batch_size=batch, rank=r, world_size=world))
        for r in range(world)
    ]
    assert (
        len({-(-len(r) // batch) for r in ranks}) == 1
    )  # every rank takes the same number of steps
    for r, sampler_order in enumerate(ranks):
        assert len(sampler_order) == len(EpochShuffleSampler(size, 5, batch, r, world))
    steps = -(-len(ranks[0]) // batch)
    for step in range(steps):
        union = sorted(i for r in ranks for i in r[step * batch : (step + 1) * batch])
        expected = single[step * batch * world : (step + 1) * batch * world]
        if len(expected) == batch * world:
            assert union == sorted(expected)  # the same global batch
        else:
            assert set(union) <= set(expected) and len(expected) - len(union) < world


def test_evaluation_shards_cover_every_example_once():
    shards = [list(ShardSampler(11, rank=r, world_size=3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))


def test_a_malformed_glue_file_names_the_file_and_layout(tmp_path):
    folder = tmp_path / "RTE"
    folder.mkdir()
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tmaybe\n")
    with pytest.raises(SsmloraError, match=r"rte: cannot read .*dev\.tsv as the original GLUE TSV"):
        get_task("rte").load_split("validation", str(tmp_path))
    (folder / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(SsmloraError, match=r"no data|has no rows"):
        get_task("rte").load_split("validation", str(tmp_path))


def test_an_empty_split_after_sampling_is_refused():
    data = TaskDataModule(task="quickstart", max_train_samples=0)
    with pytest.raises(
        SsmloraError, match=r"quickstart train split is empty \(max_train_samples=0\)"
    ):
        data.setup("fit")
