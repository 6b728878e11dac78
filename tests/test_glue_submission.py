"""`ssmlora predict` with `data.predict_splits: test` on GLUE: the unlabelled test files in their
original layouts, read with their own index column, written as the GLUE server's submission files."""

import csv
import json

import pytest
import torch
import yaml

from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.cli import main
from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import WordProblemTask, get_task
from ssmlora_app.tasks.base import INDEX_COLUMN, UNLABELLED
from ssmlora_app.tasks.vocab import byte_tokenizer
from tests.test_data import LAYOUTS, write_glue

MNLI_TEST = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
             "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]  # fmt: skip
STSB_TEST = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
             "sentence2"]  # fmt: skip
# Each task's test file header, as GLUE ships it (no label column; CoLA's has a header although its
# train/dev files have none; MRPC's is built without the Quality column; QQP numbers rows by `id`),
# and a function making a row from (index, first text, second text).
TEST_LAYOUTS = {
    "cola": (["index", "sentence"], lambda i, a, b: [i, a]),
    "sst2": (["index", "sentence"], lambda i, a, b: [i, a]),
    "mrpc": (["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], lambda i, a, b: [i, "11", "12", a, b]),
    "qqp": (["id", "question1", "question2"], lambda i, a, b: [i, a, b]),
    "stsb": (STSB_TEST, lambda i, a, b: [i, "main-news", "f", "2016", "0001", "none", "none", a, b]),
    "mnli": (MNLI_TEST, lambda i, a, b: [i, "31", "31e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", a, b]),
    "qnli": (["index", "question", "sentence"], lambda i, a, b: [i, a, b]),
    "rte": (["index", "sentence1", "sentence2"], lambda i, a, b: [i, a, b]),
    "wnli": (["index", "sentence1", "sentence2"], lambda i, a, b: [i, a, b]),
}  # fmt: skip
# The file's own indices, deliberately not 0..n-1 in file order: the written index must be them.
INDICES = ["4", "0", "9", "2", "7"]
TEXTS = [('He said "no" twice .', "He spoke ."), ("A cat sat .", 'The " cat " sat .'),
         ("Rain fell all day long in the old town .", "It was dry ."), ("Why ?", "Who ?"),
         ("Stocks rose sharply .", "Shares went up a lot today .")]  # fmt: skip
SUBMISSION = {  # task -> {test split: GLUE server file name}
    "cola": {"test": "CoLA.tsv"}, "sst2": {"test": "SST-2.tsv"}, "mrpc": {"test": "MRPC.tsv"},
    "qqp": {"test": "QQP.tsv"}, "stsb": {"test": "STS-B.tsv"}, "qnli": {"test": "QNLI.tsv"},
    "rte": {"test": "RTE.tsv"}, "wnli": {"test": "WNLI.tsv"},
    "mnli": {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv", "test_ax": "AX.tsv"},
}  # fmt: skip
VALID = {"mnli": {"entailment", "neutral", "contradiction"},
         "qnli": {"entailment", "not_entailment"}, "rte": {"entailment", "not_entailment"}}  # fmt: skip
SMALL_ROBERTA = {"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 1,
                 "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 40,
                 "pad_token_id": 1, "initializer_range": 0.3}  # fmt: skip


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None)
        writer.writerow(header)
        writer.writerows(rows)


def write_glue_with_test(root, task, ax: bool = True):
    """The task's dev/train files (tests.test_data) plus its test file(s) in the GLUE layout;
    for MNLI also the diagnostic set at the GLUE root (``diagnostic/diagnostic.tsv``)."""
    write_glue(root, task)
    header, row = TEST_LAYOUTS[task]
    rows = [row(i, a, b) for i, (a, b) in zip(INDICES, TEXTS, strict=True)]
    folder = root / LAYOUTS[task][0]
    for split in get_task(task).test_splits:
        write_tsv(folder / f"{split}.tsv", header, rows)
    if task == "mnli" and ax:
        ax_rows = [[i, a, b] for i, (a, b) in zip(INDICES[:3], TEXTS, strict=False)]
        write_tsv(
            root / "diagnostic" / "diagnostic.tsv", ["index", "sentence1", "sentence2"], ax_rows
        )
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    byte_tokenizer().save_pretrained(path)
    return path


def write_config(tmp_path, tokenizer_dir, task):
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "logger": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path)},
        "model": {
            "backbone": {"config": SMALL_ROBERTA, "tokenizer": str(tokenizer_dir)},
            "adapter": {"class_path": "ssmlora_app.adapters.LoRAConfig",
                        "init_args": {"r": 2, "alpha": 4, "target_modules": ["query", "value"]}},
        },
        "data": {"task": task, "data_dir": str(tmp_path / "glue"), "max_length": 32,
                 "batch_size": 2},
    }  # fmt: skip
    path = tmp_path / f"{task}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def predict(config, out, *extra):
    """Predict with the config's untrained model: these tests check the files' layout."""
    main(["predict", "--config", str(config), f"--predictions.output_dir={out}",
          "--allow_untrained=true", *extra])  # fmt: skip


@pytest.mark.parametrize("task", list(TEST_LAYOUTS))
def test_test_files_load_with_their_own_index_and_no_label(tmp_path, task):
    spec = get_task(task)
    root = write_glue_with_test(tmp_path, task)
    assert spec.submission_splits(str(root)) == tuple(SUBMISSION[task])
    for split in SUBMISSION[task]:
        for data_dir in (root, root / LAYOUTS[task][0]):  # the GLUE root or the task folder
            ds = spec.load_split(split, str(data_dir))
            n = 3 if split == "test_ax" else 5
            assert ds[INDEX_COLUMN] == [int(i) for i in INDICES[:n]]
            assert ds["label"] == [UNLABELLED] * n
            assert ds["text_a"] == [a for a, _ in TEXTS[:n]]  # quotes survive: quoting is off
            single = task in ("cola", "sst2")
            assert ds["text_b"] == ([None] * n if single else [b for _, b in TEXTS[:n]])


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TEST_LAYOUTS))
def test_predict_writes_the_glue_submission_files(tmp_path, tokenizer_dir, task):
    write_glue_with_test(tmp_path / "glue", task)
    out = tmp_path / "preds"
    predict(write_config(tmp_path, tokenizer_dir, task), out, "--data.predict_splits=test")
    expected_files = {f"{task}_{split}.jsonl" for split in SUBMISSION[task]}
    expected_files |= set(SUBMISSION[task].values())
    assert {p.name for p in out.iterdir()} == expected_files
    for split, name in SUBMISSION[task].items():
        lines = (out / name).read_text().splitlines()
        n = 3 if split == "test_ax" else 5
        assert lines[0] == "index\tprediction" and len(lines) == n + 1
        index, labels = zip(*(line.split("\t") for line in lines[1:]), strict=True)
        assert list(index) == sorted(INDICES[:n], key=int)  # the file's own index, in order
        if task == "stsb":
            assert len({float(v) for v in labels}) == n  # scores (float() raises otherwise)
        else:
            assert set(labels) <= VALID.get("mnli" if split == "test_ax" else task, {"0", "1"})
        records = [json.loads(line) for line in (out / f"{task}_{split}.jsonl").open()]
        assert [(str(r["index"]), str(r["prediction"])) for r in records] == list(
            zip(index, labels)
        )
        assert all(set(r) == {"index", "prediction"} for r in records)  # no placeholder label


@pytest.mark.slow
def test_each_index_gets_its_own_rows_prediction(tmp_path, tokenizer_dir):
    """STS-B scores differ per row: each written index carries the score of the row that has it
    in the test file (LoRA's B = 0 untrained, so the backbone and head alone give it)."""
    write_glue_with_test(tmp_path / "glue", "stsb")
    out = tmp_path / "preds"
    predict(write_config(tmp_path, tokenizer_dir, "stsb"), out, "--data.predict_splits=test")
    written = dict(line.split("\t") for line in (out / "STS-B.tsv").read_text().splitlines()[1:])
    tokenizer = byte_tokenizer()
    model = build_classifier(BackboneConfig(config=SMALL_ROBERTA), 1, "regression",
                             len(tokenizer), tokenizer.pad_token_id).eval()  # fmt: skip
    expected = {}
    for index, (a, b) in zip(INDICES, TEXTS, strict=True):
        with torch.no_grad():
            inputs = tokenizer(a, b, truncation=True, max_length=32, return_tensors="pt")
            expected[index] = model(**inputs).logits.item()
    assert {i: float(v) for i, v in written.items()} == pytest.approx(expected, abs=2e-4)
    assert len({round(v, 3) for v in expected.values()}) == len(INDICES)  # the check can fail


def test_unlabelled_batches_carry_no_labels_and_dev_predictions_keep_theirs(tmp_path):
    write_glue_with_test(tmp_path, "rte")
    tokenizer = tmp_path / "tok"
    byte_tokenizer().save_pretrained(tokenizer)
    test = TaskDataModule(task="rte", data_dir=str(tmp_path), tokenizer=str(tokenizer),
                          predict_splits="test")  # fmt: skip
    test.setup("predict")
    assert test.predict_split_names() == ["test"]
    batch = next(iter(test.predict_dataloader()[0]))
    assert batch.labels is None and INDEX_COLUMN not in batch.inputs
    assert len(batch.inputs["input_ids"]) == 5
    dev = TaskDataModule(task="rte", data_dir=str(tmp_path), tokenizer=str(tokenizer))
    dev.setup("predict")
    assert dev.predict_split_names() == ["validation"]
    assert next(iter(dev.predict_dataloader()[0])).labels.tolist() == [1, 0]


@pytest.mark.slow
def test_missing_test_files_are_named_with_the_fix(tmp_path, tokenizer_dir, capsys):
    write_glue(tmp_path / "glue", "mnli")  # dev and train only
    (tmp_path / "glue" / "MNLI" / "test_matched.tsv").write_text("index\tsentence1\tsentence2\n")
    config = write_config(tmp_path, tokenizer_dir, "mnli")
    with pytest.raises(SystemExit) as exit_info:
        predict(config, tmp_path / "preds", "--data.predict_splits=test")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "has no test file" in err and "MNLI/test_mismatched.tsv" in err
    assert "MNLI/test_matched.tsv," not in err  # the present one is not reported
    assert "data.data_dir: null" in err and "data.predict_splits: eval" in err
    assert not (tmp_path / "preds").exists()
    for task in ("quickstart", "boolq"):  # no test data / SuperGLUE's test split is not served
        with pytest.raises(
            SsmloraError, match=rf"task '{task}' has no test split .*predict_splits: eval"
        ):
            TaskDataModule(task=task, predict_splits="test")


def test_mnli_without_the_diagnostic_set_warns_and_writes_the_rest(tmp_path):
    root = write_glue_with_test(tmp_path, "mnli", ax=False)
    with pytest.warns(UserWarning, match="AX.tsv is not written"):
        assert get_task("mnli").submission_splits(str(root)) == ("test_matched", "test_mismatched")
    # AX.tsv beside the MNLI files (HF's file name) is found as well.
    write_tsv(root / "MNLI" / "AX.tsv", ["index", "sentence1", "sentence2"], [["0", "A .", "B ."]])
    assert get_task("mnli").submission_splits(str(root / "MNLI"))[-1] == "test_ax"


def test_a_test_file_without_its_columns_is_refused(tmp_path):
    write_glue(tmp_path, "qnli")
    write_tsv(tmp_path / "QNLI" / "test.tsv", ["question", "sentence"], [["Q ?", "S ."]])
    with pytest.raises(
        SsmloraError, match=r"not a GLUE test TSV: it lacks the column\(s\) \['index'\]"
    ):
        get_task("qnli").load_split("test", str(tmp_path))
    write_tsv(tmp_path / "QNLI" / "test.tsv", ["index", "question", "sentence"], [["a", "Q", "S"]])
    with pytest.raises(SsmloraError, match=r"cannot read .*test\.tsv as a GLUE test TSV with an"):
        get_task("qnli").load_split("test", str(tmp_path))


# Canonical GLUE test sizes (the hub's test splits).
TEST_SIZES = {("cola", "test"): 1063, ("sst2", "test"): 1821, ("mrpc", "test"): 1725,
              ("qqp", "test"): 390965, ("stsb", "test"): 1379, ("mnli", "test_matched"): 9796,
              ("mnli", "test_mismatched"): 9847, ("mnli", "test_ax"): 1104, ("qnli", "test"): 5463,
              ("rte", "test"): 3000, ("wnli", "test"): 146}  # fmt: skip


def test_real_glue_test_files(shared_data):
    """The loader alone on the real test files, where a copy has them (no model run)."""
    root, read = shared_data / "glue", 0
    for (task, split), size in TEST_SIZES.items():
        spec = get_task(task)
        path = spec.ax_file(str(root)) if split == "test_ax" else spec.test_files(str(root))[split]
        if path is None or not path.is_file():
            continue
        ds = spec.load_split(split, str(root))
        assert len(ds) == size, (task, split)
        assert ds[INDEX_COLUMN] == list(range(size))  # GLUE's test indices number the rows
        assert all(text for text in ds["text_a"]), (task, split)
        read += 1
    if not read:
        pytest.skip(f"no real GLUE test file under {root}")


def test_tasks_with_a_held_out_test_split_predict_it_under_its_own_name():
    """Not GLUE: ``predict_splits: test`` serves the labelled splits ``ssmlora test`` evaluates,
    and their files keep the task's own names (no GLUE submission name)."""
    args = {"train_length": 6, "eval_lengths": [10], "train_size": 8, "eval_size": 4}
    data = TaskDataModule(task=WordProblemTask(**args), predict_splits="test")
    assert data.predict_split_names() == data.eval_split_names("test") == ["test", "test_len10"]
    data.setup("predict")
    assert next(iter(data.predict_dataloader()[0])).labels is not None
    assert data.task.prediction_file("test") == "word_problem_test.tsv"
    assert get_task("sst2").prediction_file("test") == "SST-2.tsv"
    # dev predictions never take (and overwrite) a submission file's name
    assert get_task("sst2").prediction_file("validation") == "SST-2_validation.tsv"
    assert get_task("mnli").prediction_file("validation_matched") == "MNLI_validation_matched.tsv"
    assert get_task("quickstart").prediction_file("validation") == "quickstart.tsv"
