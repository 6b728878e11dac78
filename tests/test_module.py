"""The LightningModule through the CLI on other task shapes: MNLI's two evaluation splits,
STS-B regression, MultiRC's answer options grouped by question; backbones and tokenizers from
local folders."""

import pytest
import torch
import yaml

from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.cli import main
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.vocab import byte_tokenizer
from tests.conftest import TINY_ROBERTA
from tests.helpers import tiny_classifier
from tests.test_data import write_glue
from tests.test_tasks_data import MULTIRC_JSONL, write_jsonl


@pytest.fixture
def word_tokenizer(tmp_path):
    """A local tokenizer folder (tokenizer.json): UTF-8 bytes, so it covers any text (a word-level
    tokenizer of the quickstart's words turned these tasks' text into unknown tokens only)."""
    path = tmp_path / "tokenizer"
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("mnli", ["val_matched/accuracy", "val_mismatched/accuracy"]),
        ("stsb", ["val/pearson", "val/spearman", "val/mse"]),
        ("multirc", ["val/f1", "val/accuracy", "val/exact_match"]),
    ],
)
def test_fit_on_other_task_shapes(tmp_path, word_tokenizer, task, expected, caplog):
    caplog.set_level("INFO")
    if task == "multirc":  # SuperGLUE's original layout
        root = tmp_path / "superglue"
        for name in ("train.jsonl", "val.jsonl"):
            write_jsonl(root / "MultiRC" / name, MULTIRC_JSONL)
    else:
        root = write_glue(tmp_path / "glue", task)
    config = {
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "run"), "logger": False},
        "model": {"backbone": {"config": {k: v for k, v in TINY_ROBERTA.items() if k != "vocab_size"},
                               "tokenizer": str(word_tokenizer)}},
        "data": {"task": task, "data_dir": str(root), "batch_size": 2, "max_length": 32},
        "export": {"dirname": "adapter"},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    for name in expected:
        assert f"{name} = " in caplog.text, name
    assert "params/trainable" not in caplog.text  # hparams go to the logger, not the console


def test_backbone_from_a_local_folder(tmp_path):
    model = tiny_classifier()
    model.save_pretrained(tmp_path / "backbone")
    loaded = build_classifier(
        BackboneConfig(name_or_path=str(tmp_path / "backbone")), 2, "single_label_classification"
    )
    ids = torch.tensor([[0, 5, 6, 2]])
    assert torch.allclose(loaded.eval()(input_ids=ids).logits, model(input_ids=ids).logits)


def test_missing_backbone_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SsmloraError, match=r"Backbone '.*nope': no such folder here; a hub id"):
        build_classifier(
            BackboneConfig(name_or_path=str(tmp_path / "nope")), 2, "single_label_classification"
        )
    with pytest.raises(SsmloraError, match="Cannot load backbone 'nobody/nope'"):  # a hub id
        build_classifier(
            BackboneConfig(name_or_path="nobody/nope"), 2, "single_label_classification"
        )


def test_backbone_needs_exactly_one_source():
    with pytest.raises(SsmloraError, match="exactly one of"):
        BackboneConfig()
    with pytest.raises(SsmloraError, match="exactly one of"):
        BackboneConfig(name_or_path="roberta-base", config={"model_type": "roberta"})
