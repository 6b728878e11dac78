"""Causal-LM generation: the tokenizer's EOS on config-built backbones, and sequences within the
backbone's positions (the start-up check is exact: ``data.max_length`` bounds prompt + answer)."""

import json
import warnings

import pytest
import torch
from torch import nn

from ssmlora_app.adapters import LoRAConfig
from ssmlora_app.backbone import BackboneConfig, build_causal_lm, generation_tokens
from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.errors import SsmloraError
from ssmlora_app.module import AdapterModule
from ssmlora_app.tasks import CustomTask
from ssmlora_app.tasks.vocab import byte_tokenizer

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64}  # fmt: skip
TINY_GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 32}
"""Learned positions: a sequence longer than 32 tokens fails in the position embedding."""
LLAMA_DEFAULT_EOS = 2  # LlamaConfig's eos_token_id: byte 0x02 for the byte tokenizer


@pytest.mark.parametrize(("fields", "default"), [(TINY_LLAMA, 2), (TINY_GPT2, 50256)])
def test_a_config_backbone_takes_the_tokenizers_eos_and_bos(fields, default):
    tok = byte_tokenizer()  # <eos> = 256, <pad> = 257, no BOS
    model = build_causal_lm(
        BackboneConfig(config=fields), len(tok), tok.pad_token_id, generation_tokens(tok)
    )
    assert model.config.eos_token_id == model.generation_config.eos_token_id == 256
    assert model.config.bos_token_id is None and model.generation_config.bos_token_id is None
    # Without the tokenizer's tokens, the model type's defaults (what used to happen).
    plain = build_causal_lm(BackboneConfig(config=fields), len(tok), tok.pad_token_id)
    assert plain.generation_config.eos_token_id == default


def test_a_tokenizer_without_eos_never_stops_early():
    """byte_lm's tokenizer (V = 256, no specials): byte 0x02 is text, not Llama's EOS."""
    tok = byte_tokenizer(specials=False)
    model = build_causal_lm(
        BackboneConfig(config=TINY_LLAMA), len(tok), tok.pad_token_id, generation_tokens(tok)
    )
    assert model.generation_config.eos_token_id is None


def test_an_eos_set_in_the_config_dict_is_kept_with_a_warning():
    tok = byte_tokenizer()
    fields = {**TINY_LLAMA, "eos_token_id": 7}
    with pytest.warns(UserWarning, match="EOS id 256 is not among the EOS ids \\[7\\]"):
        model = build_causal_lm(
            BackboneConfig(config=fields), len(tok), tok.pad_token_id, generation_tokens(tok)
        )
    assert model.generation_config.eos_token_id == 7


def test_a_pretrained_backbone_keeps_its_eos_and_warns_once(tmp_path):
    tok = byte_tokenizer()
    saved = build_causal_lm(BackboneConfig(config=TINY_LLAMA), len(tok), tok.pad_token_id)
    saved.save_pretrained(tmp_path / "llama")  # eos_token_id 2, the hub default
    backbone = BackboneConfig(name_or_path=str(tmp_path / "llama"))
    with pytest.warns(UserWarning, match="not among the EOS ids \\[2\\]") as record:
        model = build_causal_lm(backbone, len(tok), tok.pad_token_id, generation_tokens(tok))
    assert sum("EOS" in str(w.message) for w in record) == 1
    assert model.generation_config.eos_token_id == LLAMA_DEFAULT_EOS
    with warnings.catch_warnings():  # the same EOS: silent
        warnings.simplefilter("error")
        build_causal_lm(backbone, len(tok), tok.pad_token_id, {"eos_token_id": 2})


def _module(tmp_path, backbone: dict, max_length: int, **task_args):
    """A LoRA module on ``backbone`` for a custom prompt/completion task over bytes, its task info
    from the data module (the CLI's route), and the data module set up for validation."""
    rows = [
        {"context": "c" * (40 + 5 * i), "prompt": f" Q{i}?", "completion": f" answer {i}"}
        for i in range(8)
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = {"train_file": str(path), "task_type": "causal_lm", "context_column": "context",
            "validation_ratio": 0.5, **task_args}  # fmt: skip
    data = TaskDataModule(task=CustomTask(**args), objective="causal_lm", max_length=max_length,
                          batch_size=4)  # fmt: skip
    targets = ["c_attn"] if backbone["model_type"] == "gpt2" else ["q_proj", "v_proj"]
    lora = LoRAConfig(r=4, alpha=8, target_modules=targets)
    module = AdapterModule(BackboneConfig(config=backbone), lora, task_info=data.task_info)
    data.setup("validate")
    return module.eval(), data


def generate_ids(module: AdapterModule, batch, lengths=None) -> list:
    return module.objective.generate_ids(module.model, batch.prompts, lengths)


def _force_next_token(module: AdapterModule, token: int) -> None:
    """Make ``token`` the arg-max after every position: a zero LM head with a one-hot bias."""
    model = module.model
    head = nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token] = 1.0
    model.lm_head = head


def _batches(data: TaskDataModule, predict: bool = False) -> list:
    """The validation split in batches of 2 (evaluation batches, or ``predict``'s)."""
    collator = data.predict_collator if predict else data.eval_collator
    rows = list(data.splits["validation"])
    return [collator(rows[i : i + 2]) for i in range(0, len(rows), 2)]


def test_generation_stops_at_the_tokenizers_eos_not_at_byte_2(tmp_path):
    module, data = _module(tmp_path, TINY_LLAMA, 48, lm_eval="generate", max_new_tokens=8)
    assert module.task_info.eos_token_id == 256
    assert module.model.generation_config.eos_token_id == 256
    batch = _batches(data)[0]
    _force_next_token(module, 256)
    with torch.no_grad():
        assert [ids.tolist() for ids in generate_ids(module, batch)] == [[256], [256]]
    _force_next_token(module, LLAMA_DEFAULT_EOS)  # byte 0x02 is text: all 8 tokens
    with torch.no_grad():
        assert [ids.tolist() for ids in generate_ids(module, batch)] == [[2] * 8, [2] * 8]


def test_generate_task_with_max_length_at_the_positions_is_accepted_and_fits(tmp_path):
    """max_length = the 32 positions of a GPT-2 with max_new_tokens 8 (refused before): prompts
    are cut to 24 tokens, so prompt + answer never pass 32."""
    module, data = _module(tmp_path, TINY_GPT2, 32, lm_eval="generate", max_new_tokens=8)
    _force_next_token(module, ord("a"))  # never EOS: every answer is as long as allowed
    totals = []
    for batch in _batches(data):
        with torch.no_grad():
            outputs = generate_ids(module, batch)
        totals += [int(p) + len(o) for p, o in zip(batch.prompts.lengths, outputs, strict=True)]
    assert totals and max(totals) == 32  # the documents were cut: the room is used, not passed


def test_teacher_forced_predictions_stay_within_max_length(tmp_path):
    """predict generates max_new_tokens (64 here) but stops at max_length with the prompt."""
    module, data = _module(tmp_path, TINY_GPT2, 32, max_new_tokens=64)  # teacher_forced
    _force_next_token(module, ord("a"))
    for batch in _batches(data, predict=True):
        with torch.no_grad():
            assert module.task_info.max_new_tokens == 64  # what predict generates
            outputs = generate_ids(module, batch, [64] * batch.size)
        for prompt, out in zip(batch.prompts.lengths, outputs, strict=True):
            assert int(prompt) + len(out) == 32


def test_max_length_past_the_positions_is_refused(tmp_path):
    with pytest.raises(SsmloraError) as err:
        _module(tmp_path, TINY_GPT2, 33, lm_eval="generate", max_new_tokens=8)
    assert str(err.value).startswith(
        "data.max_length=33 exceeds the 32 positions of the gpt2 backbone: lower data.max_length "
        "(inputs are truncated to it, the data.max_new_tokens=8 generated tokens included)"
    )


@pytest.mark.parametrize("lm_eval", ["generate", "teacher_forced"])
def test_validate_then_fit_on_the_same_module(tmp_path, lm_eval):
    """A notebook's order: score the untrained adapter, then train the same module. The text and
    teacher-forced metrics' states were created in validate's inference mode and then updated in
    place during fit's validation: "Inplace update to inference tensor outside InferenceMode"."""
    import lightning as L

    module, data = _module(tmp_path, TINY_LLAMA, 96, lm_eval=lm_eval, max_new_tokens=4)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    before = trainer.validate(module.train(), data, verbose=False)[0]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]
    assert before.keys() == after.keys() and "val/loss" in after
