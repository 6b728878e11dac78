"""Beam search beside greedy decoding: the options flow from the data module to ``generate``
(equal to HF ``generate`` called by hand), stateful adapters reorder their state with the beams
(HRM: equal to the stateless recomputation without a KV cache, and different when the reorder is
left out), Mamba backbones' own cache, and the refusals."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MambaConfig

from ssmlora_app.adapters import HRMConfig, LoRAConfig, inject_adapters
from ssmlora_app.adapters.hrm import hrm_generation
from ssmlora_app.adapters.hrm_layers import HRMBypass
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.module import AdapterModule
from ssmlora_app.objectives import objective_for
from ssmlora_app.tasks import CustomTask

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 128}  # fmt: skip
BEAMS = {"num_beams": 5, "do_sample": False, "pad_token_id": 0}


def _prompt(length: int = 7) -> torch.Tensor:
    return torch.randint(3, 97, (1, length), generator=torch.Generator().manual_seed(1))


def _llama(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, eos_token_id=5)  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def _data(tmp_path, **decoding) -> TaskDataModule:
    rows = [{"prompt": f"Q{i}: say {i}.", "completion": f" {i} {i} {i}"} for i in range(6)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = CustomTask(train_file=str(path), task_type="causal_lm", validation_ratio=0.5,
                      lm_eval="generate", max_new_tokens=9)  # fmt: skip
    return TaskDataModule(task=task, objective="causal_lm", max_length=64, batch_size=2,
                          **decoding)  # fmt: skip


@pytest.mark.parametrize("adapter", ["lora", "hrm"])
def test_the_objectives_beams_equal_generate_called_by_hand(tmp_path, adapter):
    """data.num_beams 5 / data.min_new_tokens 5 reach generate: the objective's answers equal HF
    beam search called by hand on the same model and prompts."""
    data = _data(tmp_path, num_beams=5, min_new_tokens=5)
    assert (data.task_info.num_beams, data.task_info.min_new_tokens) == (5, 5)
    config = (LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]) if adapter == "lora"
              else HRMConfig(d_state=8, gate_init=2.0))  # fmt: skip
    module = AdapterModule(BackboneConfig(config=TINY_LLAMA), config, task_info=data.task_info)
    module.eval()
    with torch.no_grad():  # an adapter away from its zero init
        for name, p in module.model.named_parameters():
            if p.requires_grad and "lm_head" not in name:
                p.add_(0.3 * torch.randn_like(p))
    data.setup("validate")
    batch = data.eval_collator(list(data.splits["validation"]))
    with torch.no_grad():
        ours = module.objective.generate_ids(module.model, batch.prompts)
    eos = data.tokenizer.eos_token_id
    for row, length, out in zip(batch.prompts.ids, batch.prompts.lengths, ours, strict=True):
        prompt = row[:length].unsqueeze(0)
        context = hrm_generation(module.model) if adapter == "hrm" else torch.no_grad()
        with torch.no_grad(), context:
            by_hand = module.model.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9,
                min_new_tokens=5, num_beams=5, do_sample=False, use_cache=True,
                pad_token_id=data.tokenizer.pad_token_id,
            )[0, int(length):]  # fmt: skip
        assert out.tolist() == by_hand.tolist()
        assert len(out) >= 5 and eos not in out[:5].tolist()  # no EOS before the minimum
    # greedy decoding answers otherwise on these prompts (the beams are not a no-op)
    greedy = objective_for(dataclasses.replace(data.task_info, num_beams=1, min_new_tokens=0))
    with torch.no_grad():
        plain = greedy.generate_ids(module.model, batch.prompts)
    assert [o.tolist() for o in plain] != [o.tolist() for o in ours]


def test_hrm_beams_reorder_the_state_with_the_kv_cache():
    """HRM carries its SSM state across KV-cached steps; under beam search each beam has its
    state, reordered with the cache. Reference: the same beam search without a cache (each step
    re-reads the whole sequence, no state carried), which the cached one equals token for token;
    without the reorder the cached beams differ (the test can fail)."""
    model = inject_adapters(_llama(), HRMConfig(d_state=8, gate_init=3.0))
    prompt = _prompt()
    kw = {**BEAMS, "max_new_tokens": 10, "min_new_tokens": 5}
    with torch.no_grad():
        reference = model.generate(prompt, use_cache=False, **kw)
        with hrm_generation(model):
            cached = model.generate(prompt, use_cache=True, **kw)
        assert torch.equal(cached, reference)
        assert not hasattr(model, "_reorder_cache") or "_reorder_cache" not in model.__dict__
        # Leaving the states in their old rows (the cache alone reordered) changes the answer.
        original = HRMBypass.reorder_state
        HRMBypass.reorder_state = lambda self, beam_idx: None
        try:
            with hrm_generation(model):
                unordered = model.generate(prompt, use_cache=True, **kw)
        finally:
            HRMBypass.reorder_state = original
        assert not torch.equal(unordered, reference)


def test_mamba_beams_use_its_own_cache():
    """A Mamba backbone (the benchmark's): beam search with its recurrent cache equals the
    recomputation without a cache."""
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=97, hidden_size=32, state_size=8, num_hidden_layers=2,
                         eos_token_id=5, use_mambapy=False)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    prompt = _prompt()
    kw = {**BEAMS, "max_new_tokens": 8}
    with torch.no_grad():
        assert torch.equal(
            model.generate(prompt, use_cache=True, **kw),
            model.generate(prompt, use_cache=False, **kw),
        )


def test_decoding_options_are_checked(tmp_path):
    with pytest.raises(SsmloraError, match=r"data\.num_beams must be at least 1"):
        _data(tmp_path, num_beams=0)
    with pytest.raises(SsmloraError, match=r"lm_choice objective of task .* generates no text"):
        TaskDataModule(task="quality", data_dir=None, num_beams=5, objective="causal_lm")
