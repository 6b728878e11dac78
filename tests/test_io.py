"""save_adapter / load_adapter: small files, round trip, peft loads them, clear errors."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from ssmlora_app.adapters import LoRAConfig, inject_adapters, load_adapter, save_adapter
from ssmlora_app.errors import SsmloraError
from tests.helpers import randomise, tiny_classifier, twin


@pytest.fixture
def trained(tmp_path):
    base = tiny_classifier()
    model = inject_adapters(twin(base), LoRAConfig(r=4, target_modules=["query", "value"]))
    randomise(lambda n: "lora_" in n or n.startswith("classifier."), model)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path="tiny")
    return base, model, tmp_path / "adapter"


IDS = torch.tensor([[0, 5, 17, 42, 2], [0, 9, 33, 2, 1]])


def test_files_hold_adapter_and_head_only(trained):
    _, model, directory = trained
    tensors = load_file(directory / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.") for k in tensors)
    assert not any("base_layer" in k or "embeddings" in k for k in tensors)
    trainable = {f"base_model.model.{n}" for n, p in model.named_parameters() if p.requires_grad}
    assert set(tensors) == trainable
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["modules_to_save"] == ["classifier"]
    assert config["ssmlora"]["config"]["r"] == 4


def test_round_trip_into_a_fresh_backbone(trained):
    base, model, directory = trained
    loaded = load_adapter(twin(base), directory).eval()
    assert torch.equal(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)


def test_peft_loads_our_directory_with_equal_logits(trained):
    base, model, directory = trained
    peft_model = PeftModel.from_pretrained(twin(base), directory).eval()
    assert torch.allclose(peft_model(input_ids=IDS).logits, model(input_ids=IDS).logits, atol=1e-6)


def test_load_without_head_keeps_the_new_head(trained):
    _, _, directory = trained
    fresh = tiny_classifier(num_labels=3, seed=1)
    head = fresh.classifier.out_proj.weight.clone()
    load_adapter(fresh, directory, load_head=False)
    assert torch.equal(fresh.classifier.out_proj.weight, head)
    with pytest.raises(SsmloraError, match="does not fit"):
        load_adapter(tiny_classifier(num_labels=3), directory)


def test_unreadable_files_give_clear_errors(trained, tmp_path):
    base, _, directory = trained
    (directory / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SsmloraError, match="Cannot read adapter weights"):
        load_adapter(twin(base), directory)
    with pytest.raises(SsmloraError, match="Cannot read adapter config"):
        load_adapter(twin(base), tmp_path / "missing")


def test_rank_mismatch_is_reported(trained):
    base, _, directory = trained
    other = inject_adapters(twin(base), LoRAConfig(r=2, target_modules=["query", "value"]))
    with pytest.raises(SsmloraError, match=r"lora_A.weight: saved \(4, 32\), model \(2, 32\)"):
        load_adapter(other, directory)
