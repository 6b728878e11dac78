"""The papers' baseline grids (configs/grids/): every adapter variant's trainable count, quoted in
its comment, is what injecting it into the backbone's shapes gives (meta device, no weights);
the HRM paper's methods sit at HRM's budget; every base config names the variants it is run
with."""

import dataclasses
import importlib
import re

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from ssmlora_app.adapters import (
    LoRAConfig,
    QLoRAConfig,
    count_trainable_parameters,
    inject_adapters,
)
from tests.conftest import REPO

GRIDS = REPO / "configs" / "grids"

ROBERTA_BASE = {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
                "pad_token_id": 1}  # fmt: skip
"""roberta-base's config.json (the rest are RobertaConfig's defaults: 768 wide, 12 layers)."""
MISTRAL_7B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000}  # fmt: skip
"""Mistral-7B-v0.1's shapes (its config.json)."""


def _model(grid: str):
    with torch.device("meta"):
        if grid == "ssmlora_paper":
            config = AutoConfig.for_model("roberta", num_labels=2, **ROBERTA_BASE)
            return AutoModelForSequenceClassification.from_config(config)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model("mistral", **MISTRAL_7B))


def _adapter(path):
    data = yaml.safe_load(path.read_text())
    module, _, name = data["class_path"].rpartition(".")
    config = getattr(importlib.import_module(module), name)(**(data.get("init_args") or {}))
    if isinstance(config, QLoRAConfig):  # 4-bit needs a GPU; its adapter is LoRA's, layer for layer
        config = LoRAConfig(
            **{f.name: getattr(config, f.name) for f in dataclasses.fields(LoRAConfig)}
        )
    return config


def _quoted(path) -> tuple[int, int | None]:
    """``(count, head)`` quoted in the file's comment (head None where not quoted)."""
    text = path.read_text()
    match = re.search(
        r"Trainable on [^:(]+?(?: \(2 classes\))?: ([\d,]+)(?: \(\+ head ([\d,]+)\))?", text
    )
    assert match, f"{path.name} quotes no trainable count"
    head = match.group(2)
    return int(match.group(1).replace(",", "")), int(head.replace(",", "")) if head else None


VARIANTS = sorted(GRIDS.glob("*/adapters/*.yaml"))


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_each_variant_trains_what_its_comment_says(path):
    model = inject_adapters(_model(path.parts[-3]), _adapter(path))
    count, head = _quoted(path)
    assert count_trainable_parameters(model, include_head=False) == count
    if head is not None:
        assert count_trainable_parameters(model) - count == head


def test_the_hrm_paper_methods_sit_at_hrms_budget():
    counts = {p.stem: _quoted(p)[0] for p in (GRIDS / "hrm_paper" / "adapters").glob("*.yaml")}
    hrm = counts.pop("hrm")
    assert {"lora", "dora", "adalora"} <= set(counts)
    assert all(abs(n / hrm - 1) < 0.06 for n in counts.values()), counts


# grids laid out as base configs + adapters/ (configs/grids/mamba-130m keeps its rows in one
# folder, checked by tests/test_mamba_grid.py)
BASES = sorted(p for p in GRIDS.glob("*/*.yaml") if (p.parent / "adapters").is_dir())


@pytest.mark.parametrize("base", BASES, ids=lambda p: p.name)
def test_each_base_config_names_every_variant_of_its_grid(base):
    """The sweep command in the base config's comment lists the grid's variants (QLoRA, GPU only,
    is named apart)."""
    text = base.read_text()
    for variant in (base.parent / "adapters").glob("*.yaml"):
        assert f"adapters/{variant.name}" in text, (base.name, variant.name)
