"""Tokenizers load right or not at all: the real RoBERTa files, id spaces with gaps, and the checks
that refuse a tokenizer which did not load its vocabulary."""

import builtins

import pytest
import yaml

from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.cli import main
from ssmlora_app.data import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import get_task
from ssmlora_app.tokenization import check_tokenizer, id_space, load_tokenizer, require_gguf


@pytest.fixture(scope="module")
def roberta_dir(request):
    from pathlib import Path

    path = Path(request.config.getoption("--shared-data")) / "models" / "roberta-base-tokenizer"
    if not (path / "vocab.json").is_file():
        pytest.skip(f"RoBERTa tokenizer files absent from {path}")
    return path


def test_a_vocab_and_merges_folder_loads_the_real_roberta_tokenizer(roberta_dir):
    tokenizer = load_tokenizer(str(roberta_dir))
    assert tokenizer("Hello world")["input_ids"] == [0, 31414, 232, 2]
    assert tokenizer.convert_tokens_to_ids("<mask>") == 50264
    assert tokenizer.decode(tokenizer("A gripping, funny film.")["input_ids"][1:-1]) == (
        "A gripping, funny film."
    )


def test_a_config_backbone_embeds_every_id_the_tokenizer_emits(roberta_dir):
    """len(tokenizer) is 50262 (the vocabulary has gaps) but <mask> is 50264."""
    tokenizer = load_tokenizer(str(roberta_dir))
    assert len(tokenizer) < 50265 == id_space(tokenizer)
    data = TaskDataModule(task="sst2", tokenizer=str(roberta_dir), max_length=16)
    assert data.task_info.vocab_size == 50265
    fields = {"model_type": "roberta", "hidden_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 32}  # fmt: skip
    model = build_classifier(
        BackboneConfig(config=fields), 2, "single_label_classification", id_space(tokenizer), 1
    )
    assert model.roberta.embeddings.word_embeddings.num_embeddings == 50265


def test_the_broken_load_is_refused(roberta_dir):
    """``RobertaTokenizer(vocab_file=…, merges_file=…)`` ignores the file keywords under
    transformers 5 and gives the 5 special tokens: the check names it."""
    from transformers import RobertaTokenizer

    broken = RobertaTokenizer(
        vocab_file=str(roberta_dir / "vocab.json"), merges_file=str(roberta_dir / "merges.txt")
    )
    if len(broken) > 1000:
        pytest.skip("this transformers version reads the file keywords")
    with pytest.raises(SsmloraError, match=f"has only {len(broken)} tokens"):
        check_tokenizer(broken, ["a gripping , funny film ."], "the sample")


def test_a_tokenizer_that_maps_the_text_to_unknown_tokens_is_refused():
    words = get_task("quickstart").builtin_tokenizer()  # knows only the quickstart's words
    check_tokenizer(words, ["a superb film", "the plot was dull"], "the sample")
    with pytest.raises(SsmloraError, match=r"maps 6 of 6 tokens of the sample to unknown"):
        check_tokenizer(words, ["Kafka wrote novels", "xyz qqq zzz"], "the sample")


def test_fit_stops_before_training_when_the_tokenizer_does_not_cover_the_text(tmp_path, capsys):
    from tests.test_data import write_glue

    tokenizer = tmp_path / "tokenizer"
    get_task("quickstart").builtin_tokenizer().save_pretrained(tokenizer)
    config = {
        "trainer": {"max_epochs": 1, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run")},
        "model": {"backbone": {"config": {"model_type": "roberta", "hidden_size": 16,
                                          "num_hidden_layers": 1, "num_attention_heads": 2,
                                          "intermediate_size": 32},
                               "tokenizer": str(tokenizer)}},
        "data": {"task": "mnli", "data_dir": str(write_glue(tmp_path / "glue", "mnli")),
                 "batch_size": 2, "max_length": 16},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ssmlora: error:")]
    assert len(errors) == 1 and "to unknown or special tokens" in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_missing_gguf_package_is_named(monkeypatch):
    real_import = builtins.__import__

    def no_gguf(name, *args, **kwargs):
        if name == "gguf":
            raise ImportError("No module named 'gguf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gguf)
    with pytest.raises(SsmloraError, match="needs the gguf package: pip install gguf"):
        require_gguf()
    with pytest.raises(SsmloraError, match="needs the gguf package"):
        load_tokenizer("some/folder", gguf_file="model.gguf")


def test_gguf_file_needs_a_folder_or_repository():
    with pytest.raises(SsmloraError, match=r"gguf_file needs model\.backbone\.name_or_path"):
        BackboneConfig(config={"model_type": "llama"}, gguf_file="model.gguf")


def test_local_paths_expand_home_and_variables(tmp_path, monkeypatch):
    (tmp_path / "models" / "enc").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MODELS", str(tmp_path / "models"))
    assert BackboneConfig(name_or_path="~/models/enc").name_or_path == str(
        tmp_path / "models" / "enc"
    )
    assert BackboneConfig(name_or_path="$MODELS/enc").name_or_path == str(
        tmp_path / "models" / "enc"
    )
    assert BackboneConfig(name_or_path="roberta-base").name_or_path == "roberta-base"
