"""SSMLoRA's ``chains: reference``: the state keys of the reference repository
(yuhkalhic/SSMLoRA ``src/models/model_utils.py``) next to the paper's per-type chains."""

import pytest
import torch

from ssmlora_app.adapters import SSMLoRAConfig, SSMLoRALinear, inject_adapters
from ssmlora_app.errors import SsmloraError
from tests.helpers import meta_classifier, tiny_classifier

ROBERTA4 = {"model_type": "roberta", "vocab_size": 120, "hidden_size": 32,
            "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64,
            "max_position_embeddings": 40, "pad_token_id": 1}  # fmt: skip


def chains(model) -> dict[str, tuple[str, int]]:
    return {
        name: (m.chain, m.position)
        for name, m in model.named_modules()
        if isinstance(m, SSMLoRALinear)
    }


def test_reference_keys_on_an_encoder():
    model = inject_adapters(tiny_classifier(ROBERTA4), SSMLoRAConfig(chains="reference"))
    found = chains(model)
    layer = "roberta.encoder.layer"
    expected = {
        f"{layer}.0.attention.self.query": ("query_0", 0),
        f"{layer}.1.attention.self.value": ("value_1", 0),
        f"{layer}.2.attention.self.query": ("query_2", 0),
        f"{layer}.3.attention.self.value": ("value_3", 0),
        **{f"{layer}.{i}.attention.output.dense": ("od", i) for i in range(4)},
        **{f"{layer}.{i}.intermediate.dense": ("mlp", i) for i in range(4)},
        **{f"{layer}.{i}.output.dense": ("md", i) for i in range(4)},
        "classifier.dense": ("score", 0),
        "classifier.out_proj": ("score", 1),
    }
    assert found == expected


def test_reference_keys_on_llama_split_the_ffn_in():
    model = meta_classifier("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, vocab_size=100)  # fmt: skip
    found = chains(inject_adapters(model, SSMLoRAConfig(chains="reference")))
    assert found["model.layers.0.self_attn.q_proj"] == ("query_0", 0)
    assert found["model.layers.1.self_attn.v_proj"] == ("value_1", 0)
    assert found["model.layers.1.mlp.gate_proj"] == ("mlp", 1)
    assert found["model.layers.1.mlp.up_proj"] == ("mu", 1)
    assert found["model.layers.0.mlp.down_proj"] == ("md", 0)
    assert found["score"] == ("score", 0)


def test_reference_chains_change_what_queries_read():
    """Per-layer query/value keys start every forward from a zero state; under the paper's
    chains the second query reads the first one's state."""
    ids = torch.randint(3, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    outputs = {}
    for kind in ("type", "reference"):
        model = inject_adapters(tiny_classifier(ROBERTA4), SSMLoRAConfig(chains=kind))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            outputs[kind] = model(input_ids=ids).logits
    assert (outputs["type"] - outputs["reference"]).abs().max() > 1e-4


def test_reference_chains_refuse_a_module_they_have_no_key_for():
    config = SSMLoRAConfig(preset=None, target_modules=["key"], chains="reference")
    with pytest.raises(SsmloraError, match="reference keys queries"):
        inject_adapters(tiny_classifier(ROBERTA4), config)
    with pytest.raises(SsmloraError, match="'type', 'reference'"):
        SSMLoRAConfig(chains="layers").validate()
