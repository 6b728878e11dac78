"""The configs of the real-weights reproduction (docs/results.md): every adapter variant's trainable
count, quoted in its comment, is what injecting it into the backbone's shapes gives (meta device,
no weights needed), and the decoder variants' budgets match within 5%."""

import importlib
import re

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from ssmlora_app.adapters import count_trainable_parameters, inject_adapters
from tests.conftest import REPO

REAL = REPO / "configs" / "real"

MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "vocab_size": 30522}  # fmt: skip
"""all-MiniLM-L6-v2's shapes (its config.json)."""
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
           "tie_word_embeddings": True}  # fmt: skip
"""SmolLM2-135M-Instruct's shapes (its config, read from the GGUF file)."""


def _model(kind: str):
    with torch.device("meta"):
        if kind == "minilm":
            config = AutoConfig.for_model("bert", num_labels=2, **MINILM)
            return AutoModelForSequenceClassification.from_config(config)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **SMOLLM2))


def _adapter(path):
    data = yaml.safe_load(path.read_text())
    module, _, name = data["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**(data.get("init_args") or {}))


def _quoted(path) -> int:
    match = re.search(r"Trainable on [^:(]+?(?: \(2 classes\))?: ([\d,]+)", path.read_text())
    assert match, f"{path.name} quotes no trainable count"
    return int(match.group(1).replace(",", ""))


VARIANTS = sorted((REAL / "adapters").glob("*/*.yaml"))


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_variant_trains_what_its_comment_says(path):
    model = inject_adapters(_model(path.parent.name), _adapter(path))
    assert count_trainable_parameters(model, include_head=False) == _quoted(path)


def test_the_decoder_variants_have_matched_budgets():
    counts = {p.stem: _quoted(p) for p in (REAL / "adapters" / "smollm2").glob("*.yaml")}
    lora = counts.pop("lora_qv")
    assert counts and all(abs(n / lora - 1) < 0.05 for n in counts.values()), counts


DECODER_TASKS = sorted(REAL.glob("smollm2_*.yaml"))


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("path", DECODER_TASKS, ids=lambda p: p.stem)
def test_each_decoder_task_config_encodes_every_split_with_the_real_tokenizer(path, real_weights):
    """Every split (the 2T and 4T evaluations included) fits the config's max_length: the parity
    config once shipped with 192, which its T=64 evaluation (128 + 127 tokens) exceeds, and every
    run of its sweep stopped at the length check."""
    from ssmlora_app.data import TaskDataModule

    config = yaml.safe_load(path.read_text())
    data = dict(config["data"])
    task = data.pop("task")
    if isinstance(task, dict):
        module, _, name = task["class_path"].rpartition(".")
        task = getattr(importlib.import_module(module), name)(**task.get("init_args", {}))
    folder = real_weights / config["model"]["backbone"]["name_or_path"].rsplit("/", 1)[-1]
    dm = TaskDataModule(task=task, tokenizer=str(folder), **data)
    dm.setup("fit")
    assert set(dm.eval_split_names("fit")) <= set(dm.splits)
    longest = max(len(ids) for ds in dm.splits.values() for ids in ds["input_ids"])
    assert longest <= data["max_length"]
