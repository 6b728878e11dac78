"""The peft adapter (any peft method through peft itself): every objective gives the numbers of
the peft model run by hand, virtual tokens included; the folder is peft's (PeftModel loads it);
AdaLoRA's budget steps with the optimizer; what cannot work is refused in one line."""

import copy

import peft
import pytest
import torch
from safetensors.torch import load_file

from ssmlora_app.adapters import (
    PeftConfig,
    count_trainable_parameters,
    inject_adapters,
    load_adapter,
    merge_and_unload,
    save_adapter,
)
from ssmlora_app.backbone import BackboneConfig, build_causal_lm, build_classifier
from ssmlora_app.errors import SsmloraError
from ssmlora_app.factory import build_model
from ssmlora_app.objectives import objective_for
from ssmlora_app.objectives.batches import ChoiceInputs, ClassificationBatch, LMBatch, PromptInputs
from ssmlora_app.tasks import TaskInfo
from ssmlora_app.tasks.metrics import teacher_forced_stats
from tests.conftest import TINY_ROBERTA

TINY_LLAMA = {"model_type": "llama", "vocab_size": 120, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1,
              "eos_token_id": 2}  # fmt: skip
PROMPT = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}
PREFIX = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}
P_TUNING = {"peft_type": "P_TUNING", "num_virtual_tokens": 4, "encoder_hidden_size": 16}
VIRTUAL = {"prompt": PROMPT, "prefix": PREFIX, "p_tuning": P_TUNING}


def info(objective: str, **fields) -> TaskInfo:
    base = dict(task="t", num_labels=2, problem_type="single_label_classification",
                metrics=("accuracy",), eval_splits=("validation",), vocab_size=120,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, objective=objective,
                max_new_tokens=6, max_length=40)  # fmt: skip
    return TaskInfo(**{**base, **fields})


def shake(model, std: float = 0.5) -> None:
    """Move every trainable tensor away from its init (a zero prefix would hide a dropped one)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


def lm(fields: dict, objective: str):
    """(objective, our adapted causal LM, peft's own model on an identical backbone with the same
    adapter weights: the reference run by hand)."""
    task = objective_for(info(objective))
    backbone = BackboneConfig(config=TINY_LLAMA)
    model = build_model(backbone, PeftConfig(peft_config=dict(fields)), task).eval()
    shake(model)
    fresh = build_causal_lm(backbone, 120, 0, {"bos_token_id": 1, "eos_token_id": 2})
    config = peft.get_peft_config({**fields, "task_type": "CAUSAL_LM"})
    reference = peft.get_peft_model(fresh, config).eval()
    reference.load_state_dict(model.peft_model.state_dict())
    return task, model, reference


def by_hand_logits(reference, ids, mask) -> torch.Tensor:
    """Logits of the input tokens, computed from peft's pieces: prompt tuning/P-tuning as
    embeddings in front (their n logits dropped), prefix tuning through peft's forward."""
    config = reference.active_peft_config
    if not config.is_prompt_learning or config.peft_type == "PREFIX_TUNING":
        return reference(input_ids=ids, attention_mask=mask).logits
    n = config.num_virtual_tokens
    prompts = reference.get_prompt(batch_size=ids.shape[0])
    embeds = torch.cat([prompts, reference.word_embeddings(ids)], 1)
    full = torch.cat([torch.ones(ids.shape[0], n, dtype=mask.dtype), mask], 1)
    return reference.get_base_model()(inputs_embeds=embeds, attention_mask=full).logits[:, n:]


def lm_batch(seed: int = 0) -> LMBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    ids[1, 9:] = 0
    labels = ids.clone()
    labels[:, :6] = -100
    labels[mask == 0] = -100
    prompts = PromptInputs(ids=ids[:, :6].clone(), lengths=torch.tensor([6, 5, 6]))
    # two examples, three options each: the context then the option (right-padded)
    rows = torch.randint(3, 120, (6, 9), generator=g)
    choice_mask = torch.ones_like(rows)
    choice_mask[2, 7:] = 0
    rows[2, 7:] = 0
    choice_labels = rows.clone()
    choice_labels[:, :5] = -100
    choice_labels[choice_mask == 0] = -100
    choices = ChoiceInputs(rows, choice_mask, choice_labels, torch.tensor([3, 3]))
    return LMBatch(input_ids=ids, attention_mask=mask, labels=labels, gold=torch.tensor([0, 2]),
                   choices=choices, prompts=prompts)  # fmt: skip


@pytest.mark.parametrize("kind", list(VIRTUAL))
def test_teacher_forced_numbers_and_loss_equal_peft_by_hand(kind):
    task, model, reference = lm(VIRTUAL[kind], "lm_teacher_forced")
    batch = lm_batch()
    with torch.no_grad():
        ours = task.target_stats(model, batch)
        logits = by_hand_logits(reference, batch.input_ids, batch.attention_mask)
        expected = teacher_forced_stats(logits, batch.labels)
        loss = task.training_loss(model, batch)
        peft_loss = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              labels=batch.labels).loss  # fmt: skip
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, peft_loss, rtol=1e-6, atol=1e-6)
    plain = teacher_forced_stats(
        build_causal_lm(BackboneConfig(config=TINY_LLAMA), 120, 0)(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).logits.detach(),
        batch.labels,
    )
    assert (plain[0] - ours[0]).abs().max() > 1e-3  # the virtual tokens act


@pytest.mark.parametrize("kind", list(VIRTUAL))
def test_choice_scoring_equals_peft_by_hand(kind):
    task, model, reference = lm(VIRTUAL[kind], "lm_choice")
    batch = lm_batch(1)
    choices = batch.choices
    with torch.no_grad():
        ours = task.choose(model, batch)
        logits = by_hand_logits(reference, choices.input_ids, choices.attention_mask)
    nll, _, _ = teacher_forced_stats(logits, choices.labels)
    expected = torch.stack([s.argmax() for s in torch.split(-nll, [3, 3])])
    assert torch.equal(ours, expected)


def greedy_by_hand(reference, prompt: torch.Tensor, steps: int, eos: int = 2) -> list[int]:
    """Greedy decoding without a cache: the whole sequence through the model at every step."""
    seq, out = prompt[None], []
    for _ in range(steps):
        with torch.no_grad():
            logits = by_hand_logits(reference, seq, torch.ones_like(seq))
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == eos:
            break
        seq = torch.cat([seq, torch.tensor([[token]])], 1)
    return out


@pytest.mark.parametrize("kind", list(VIRTUAL))
def test_generation_equals_greedy_decoding_of_peft_by_hand(kind):
    """Our KV-cached decoding against the full forward at every step (peft's own ``generate``
    in this transformers version drops the prefix and misplaces prompt tuning's positions)."""
    task, model, reference = lm(VIRTUAL[kind], "lm_generate")
    prompts = lm_batch(2).prompts
    with torch.no_grad():
        ours = [ids.tolist() for ids in task.generate_ids(model, prompts, [8, 8, 8])]
    expected = [
        greedy_by_hand(reference, prompts.ids[i, : prompts.lengths[i]], 8) for i in range(3)
    ]
    assert ours == expected
    assert any(len(row) == 8 for row in ours)


def test_lora_family_generation_goes_through_peft():
    task, model, reference = lm({"peft_type": "LORA", "r": 4, "use_dora": True}, "lm_generate")
    prompts = lm_batch(2).prompts
    with torch.no_grad():
        ours = [ids.tolist() for ids in task.generate_ids(model, prompts, [6, 6, 6])]
    assert ours == [greedy_by_hand(reference, prompts.ids[i, : prompts.lengths[i]], 6)
                    for i in range(3)]  # fmt: skip


CLASSIFIERS = {
    "roberta_prompt": (TINY_ROBERTA, PROMPT),
    "roberta_p_tuning": (TINY_ROBERTA, P_TUNING),
    "roberta_ia3": (TINY_ROBERTA, {"peft_type": "IA3", "target_modules": ["query", "value"],
                                   "feedforward_modules": []}),
    "llama_loha": ({**TINY_LLAMA, "num_labels": 2},
                   {"peft_type": "LOHA", "r": 4, "target_modules": ["q_proj", "v_proj"]}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classification_equals_peft_by_hand(name):
    fields, peft_fields = CLASSIFIERS[name]
    fields = {k: v for k, v in fields.items() if k != "num_labels"}
    task = objective_for(info("classification", vocab_size=None, pad_token_id=None,
                              max_length=16))  # fmt: skip
    backbone = BackboneConfig(config=fields)
    model = build_model(backbone, PeftConfig(peft_config=dict(peft_fields)), task).eval()
    shake(model, 0.2)
    fresh = build_classifier(backbone, 2, "single_label_classification")
    reference = peft.get_peft_model(
        fresh, peft.get_peft_config({**peft_fields, "task_type": "SEQ_CLS"})
    )
    reference.load_state_dict(model.peft_model.state_dict())
    reference.eval()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 120, (6, 10), generator=g)
    mask = torch.ones_like(ids)
    if fields["model_type"] == "roberta":
        mask[0, 7:] = 0
        ids[0, 7:] = fields.get("pad_token_id", 1)
    batch = ClassificationBatch({"input_ids": ids, "attention_mask": mask}, torch.arange(6) % 2)
    with torch.no_grad():
        predicted = task.predict(model, batch)
        expected = reference(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        loss = task.training_loss(model, batch)
        peft_loss = reference(input_ids=ids, attention_mask=mask, labels=batch.labels).loss
    assert torch.equal(predicted, expected)
    torch.testing.assert_close(loss, peft_loss)


# ---- the folder is peft's --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(VIRTUAL))
def test_peft_loads_the_folder_of_a_causal_lm_with_virtual_tokens(kind, tmp_path):
    task, model, _ = lm(VIRTUAL[kind], "lm_teacher_forced")
    save_adapter(model, tmp_path / "a")
    assert set(load_file(tmp_path / "a" / "adapter_model.safetensors")) == {"prompt_embeddings"}
    fresh = build_causal_lm(BackboneConfig(config=TINY_LLAMA), 120, 0)
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "a").eval()
    batch = lm_batch()
    with torch.no_grad():
        expected = task.target_stats(model, batch)[0]
        logits = by_hand_logits(loaded, batch.input_ids, batch.attention_mask)
        ours = load_adapter(build_causal_lm(BackboneConfig(config=TINY_LLAMA), 120, 0),
                            tmp_path / "a").eval()  # fmt: skip
        again = task.target_stats(ours, batch)[0]
    torch.testing.assert_close(teacher_forced_stats(logits, batch.labels)[0], expected)
    torch.testing.assert_close(again, expected)


@pytest.mark.parametrize(
    "fields",
    [
        {"peft_type": "LORA", "r": 4, "use_dora": True, "target_modules": ["query", "value"]},
        {"peft_type": "LOKR", "r": 4, "target_modules": ["query", "value"]},
        {"peft_type": "VERA", "r": 16, "target_modules": ["query", "value"]},
    ],
    ids=lambda f: f["peft_type"] + ("_dora" if f.get("use_dora") else ""),
)
def test_peft_loads_the_folder_of_a_classifier_and_merging_keeps_the_logits(fields, tmp_path):
    def fresh():
        return build_classifier(
            BackboneConfig(config=TINY_ROBERTA), 2, "single_label_classification"
        )

    model = inject_adapters(fresh(), PeftConfig(peft_config=fields)).eval()
    shake(model, 0.1)
    ids = torch.randint(3, 120, (3, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_adapter(model, tmp_path / "a", base_model_name_or_path="tiny")
    loaded = peft.PeftModel.from_pretrained(fresh(), tmp_path / "a").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected)
        merged = merge_and_unload(model)
        assert type(merged).__name__ == "RobertaForSequenceClassification"
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)


# ---- AdaLoRA: the budget allocation runs with the optimizer ---------------------------------


def test_adalora_budget_follows_its_schedule_through_fit(tmp_path):
    """total_step left out: the run's optimizer steps (12 batches, accumulating 2: 6 steps);
    update_and_allocate once per optimizer step with its index; the final ranks are target_r
    per module, and the folder (peft's, with the rank pattern) reloads to the same logits."""
    import lightning as L
    from torch.utils.data import DataLoader

    from ssmlora_app.module import AdapterModule

    fields = {"peft_type": "ADALORA", "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 2,
              "deltaT": 1, "target_modules": ["query", "value"]}  # fmt: skip
    module = AdapterModule(
        BackboneConfig(config=TINY_ROBERTA), PeftConfig(peft_config=fields),
        task_info=info("classification", vocab_size=None, pad_token_id=None, max_length=None),
    )  # fmt: skip
    tuner = module.model.peft_model.base_model
    calls = []
    allocate = tuner.rankallocator.update_and_allocate

    def spy(model, step, force_mask=False):
        budget, pattern = allocate(model, step, force_mask)
        calls.append((step, budget))
        return budget, pattern

    tuner.rankallocator.update_and_allocate = spy
    g = torch.Generator().manual_seed(0)
    rows = [ClassificationBatch({"input_ids": torch.randint(3, 120, (4, 8), generator=g)},
                                torch.randint(0, 2, (4,), generator=g)) for _ in range(12)]  # fmt: skip
    loader = DataLoader(rows, batch_size=None)
    trainer = L.Trainer(max_epochs=1, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    config = module.model.active_config
    assert config.total_step == 6
    steps = [s for s, _ in calls]
    assert steps == list(range(5)) and len(calls) == 5  # the last step only masks (final phase)
    schedule = [tuner.rankallocator.budget_schedule(s)[0] for s in range(6)]
    assert [b for _, b in calls] == schedule[:5] and schedule[0] == 4 * 6
    kept = [int((layer.lora_E["default"] != 0).sum()) for layer in _adalora_layers(module.model)]
    assert sum(kept) == 4 * 2 and config.rank_pattern  # target_r per adapted module
    save_adapter(module.model, tmp_path / "a")
    fresh = build_classifier(BackboneConfig(config=TINY_ROBERTA), 2, "single_label_classification")
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "a").eval()
    ours = load_adapter(
        build_classifier(BackboneConfig(config=TINY_ROBERTA), 2, "single_label_classification"),
        tmp_path / "a",
    ).eval()
    ids = torch.randint(3, 120, (2, 8))
    with torch.no_grad():
        expected = module.model.eval()(input_ids=ids).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected)
        torch.testing.assert_close(ours(input_ids=ids).logits, expected)


def _adalora_layers(model):
    from peft.tuners.adalora import AdaLoraLayer

    return [m for m in model.modules() if isinstance(m, AdaLoraLayer)]


# ---- counts, refusals -----------------------------------------------------------------------


def test_trainable_counts_are_peft_own():
    model = inject_adapters(
        build_classifier(BackboneConfig(config=TINY_ROBERTA), 2, "single_label_classification"),
        PeftConfig(peft_config={"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 5}),
    )
    head = 32 * 32 + 32 + 32 * 2 + 2  # RoBERTa's classifier: dense + out_proj
    assert count_trainable_parameters(model, include_head=False) == 5 * 32
    assert count_trainable_parameters(model) == 5 * 32 + head


@pytest.mark.parametrize(
    ("backbone", "fields", "message"),
    [
        (TINY_ROBERTA, PREFIX, "PREFIX_TUNING needs a backbone that takes past keys"),
        ({**TINY_LLAMA}, PROMPT, "a decoder's head then pools the last position"),
        (TINY_ROBERTA, {"peft_type": "NOPE"}, "needs a peft_type among"),
        (TINY_ROBERTA, {"peft_type": "LORA", "rank": 4}, "unexpected keyword argument 'rank'"),
        (TINY_ROBERTA, {**PROMPT, "modules_to_save": ["x"]}, "leave modules_to_save out"),
        (TINY_ROBERTA, {**PROMPT, "task_type": "TOKEN_CLS"}, "is not one of this app's"),
    ],
)
def test_what_peft_would_get_wrong_is_refused_in_one_line(backbone, fields, message):
    model = build_classifier(BackboneConfig(config=backbone), 2, "single_label_classification")
    with pytest.raises(SsmloraError, match=message) as err:
        inject_adapters(model, PeftConfig(peft_config=fields))
    assert "\n" not in str(err.value)


def test_the_mamba_classifier_and_conflicting_targets_are_refused():
    mamba = {"model_type": "mamba", "hidden_size": 16, "num_hidden_layers": 2, "state_size": 8,
             "vocab_size": 120, "pad_token_id": 1}  # fmt: skip
    model = build_classifier(BackboneConfig(config=mamba), 2, "single_label_classification")
    with pytest.raises(SsmloraError, match="need a transformers model"):
        inject_adapters(model, PeftConfig(peft_config={"peft_type": "IA3"}))
    both = PeftConfig(peft_config={"peft_type": "LORA", "target_modules": ["key"]},
                      target_modules=["query"])  # fmt: skip
    with pytest.raises(SsmloraError, match="target_modules is given twice"):
        both.validate()
    merged = PeftConfig(peft_config={"peft_type": "LORA"}, target_modules=["query"])
    assert merged.fields()["target_modules"] == ["query"]


def test_virtual_tokens_count_against_the_positions():
    """RoBERTa-tiny has 40 - 2 = 38 positions: 32 tokens + 4 virtual fit, + 8 do not."""
    task = objective_for(info("classification", max_length=32, vocab_size=None, pad_token_id=None))
    backbone = BackboneConfig(config=TINY_ROBERTA)
    build_model(backbone, PeftConfig(peft_config=dict(PROMPT)), task)
    with pytest.raises(SsmloraError, match=r"data\.max_length=32 plus the adapter's 8 virtual"):
        build_model(backbone, PeftConfig(peft_config={**PROMPT, "num_virtual_tokens": 8}), task)


def test_a_prompt_learning_model_is_not_merged_and_its_checkpoint_state_is_whole():
    model = inject_adapters(
        build_classifier(BackboneConfig(config=TINY_ROBERTA), 2, "single_label_classification"),
        PeftConfig(peft_config=dict(P_TUNING)),
    )
    with pytest.raises(SsmloraError, match="cannot be merged"):
        merge_and_unload(copy.deepcopy(model))
    from ssmlora_app.adapters import adapter_state_dict

    state = adapter_state_dict(model)
    assert any("mlp_head" in k for k in state)  # the encoder's weights, for resuming
    assert not any("original_module" in k or "word_embeddings" in k for k in state)


@pytest.mark.slow
def test_a_prompt_tuned_causal_lm_fits_validates_and_reloads_through_the_app(tmp_path):
    """Prefix tuning on a tiny Llama over bytes through the data module, fit and validate
    (generation metrics), and its folder reloaded to the same validation numbers."""
    import json

    import lightning as L

    from ssmlora_app.data.datamodule import TaskDataModule
    from ssmlora_app.module import AdapterModule
    from ssmlora_app.tasks import CustomTask

    rows = [{"prompt": f"Q{i}:", "completion": f" {i % 3}"} for i in range(24)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = CustomTask(train_file=str(path), task_type="causal_lm", validation_ratio=0.25,
                      lm_eval="generate", max_new_tokens=3)  # fmt: skip
    data = TaskDataModule(task=task, objective="causal_lm", max_length=24, batch_size=6)
    llama = {
        k: v
        for k, v in TINY_LLAMA.items()
        if k not in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
    }
    module = AdapterModule(BackboneConfig(config=llama), PeftConfig(peft_config=dict(PREFIX)),
                           optimizer=lambda p: torch.optim.AdamW(p, lr=1e-1), scheduler=None,
                           task_info=data.task_info)  # fmt: skip
    trainer = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    before = trainer.validate(module, data, verbose=False)[0]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"] - 0.2, (before, after)  # the prefix learns
    save_adapter(module.model, tmp_path / "adapter")
    again = AdapterModule(BackboneConfig(config=llama), None, init_adapter_from=str(
        tmp_path / "adapter"), task_info=data.task_info)  # fmt: skip
    reloaded = trainer.validate(again, data, verbose=False)[0]
    assert reloaded == pytest.approx(after, rel=1e-5)
