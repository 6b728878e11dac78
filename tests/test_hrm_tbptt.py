"""HRM's chunked truncated BPTT (``tbptt_chunk``, ``state_clip``): the chunked loss is the
unchunked one on sequences short enough for both, its gradient is exactly the truncated one (the
chunks' losses backpropagated one by one with the carry detached), and it trains through fit."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ssmlora_app.adapters import HRMConfig, inject_adapters, lm_training_loss
from ssmlora_app.adapters.hrm_layers import HRMLayer, carried_state
from ssmlora_app.adapters.hrm_tbptt import chunk_nll, detach_cache
from ssmlora_app.errors import SsmloraError


def model_with(**options):
    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=97, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=128)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    return inject_adapters(model, HRMConfig(d_state=8, gate_init=0.5, **options)).train()


def batch(length: int = 30):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[2, length - 6 :] = 0  # a right-padded row
    labels = ids.clone()
    labels[:, :5] = -100
    labels[mask == 0] = -100
    return ids, mask, labels


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk", [1, 7, 10, 29])
def test_the_chunked_loss_is_the_unchunked_loss(chunk):
    model = model_with(tbptt_chunk=chunk)
    ids, mask, labels = batch()
    full = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    chunked = lm_training_loss(model, ids, mask, labels)
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_the_gradient_is_the_truncated_one():
    """Against the chunks backpropagated one by one (the definition of truncated BPTT): same
    gradient; against full backpropagation: another one (the truncation acts)."""
    model = model_with(tbptt_chunk=8)
    ids, mask, labels = batch()
    lm_training_loss(model, ids, mask, labels).backward()
    ours = grads(model)
    model.zero_grad()
    count = (labels[:, 1:] != -100).sum()
    cache = None
    with carried_state(model):
        for start in range(0, 30, 8):
            end = min(start + 8, 30)
            kw = {} if cache is None else {"past_key_values": cache}
            out = model(input_ids=ids[:, start:end], attention_mask=mask[:, :end], use_cache=True,
                        **kw)  # fmt: skip
            (chunk_nll(out.logits, labels[:, start + 1 : end + 1]) / count).backward()
            cache = detach_cache(out.past_key_values)
    reference = grads(model)
    for name, g in ours.items():
        torch.testing.assert_close(g, reference[name], rtol=1e-4, atol=1e-6, msg=name)
    model.zero_grad()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    full = grads(model)
    assert max(float((ours[n] - full[n]).abs().max()) for n in ours) > 1e-5


def test_the_carried_state_is_clipped_and_eval_is_one_forward():
    model = model_with(tbptt_chunk=8, state_clip=0.05)
    ids, mask, labels = batch()
    layers = [m for m in model.modules() if isinstance(m, HRMLayer)]
    seen = []
    with carried_state(model):
        model(input_ids=ids[:, :8], attention_mask=mask[:, :8], use_cache=True)
        seen += [float(torch.linalg.vector_norm(layer._state, dim=-1).max()) for layer in layers]
    assert seen and max(seen) <= 0.05 + 1e-6
    full = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    clipped = lm_training_loss(model, ids, mask, labels)
    assert abs(float(clipped) - float(full)) > 1e-6  # the clip changes what later chunks read
    with torch.no_grad():  # outside training: one forward, no chunks
        torch.testing.assert_close(lm_training_loss(model.eval(), ids, mask, labels), full)


def test_bad_options_are_refused():
    with pytest.raises(SsmloraError, match="tbptt_chunk must be a positive integer"):
        HRMConfig(tbptt_chunk=0).validate()
    with pytest.raises(SsmloraError, match="state_clip must be positive"):
        HRMConfig(state_clip=-1.0).validate()


@pytest.mark.slow
def test_chunked_training_through_fit_lowers_the_loss(tmp_path):
    """A byte-level causal LM trained in chunks of 16 through the app (accumulating 2 batches:
    Lightning's one backward per step carries every chunk's gradient)."""
    import json

    import lightning as L

    from ssmlora_app.backbone import BackboneConfig
    from ssmlora_app.data.datamodule import TaskDataModule
    from ssmlora_app.module import AdapterModule
    from ssmlora_app.tasks import CustomTask

    rows = [{"prompt": "abc" * (4 + i % 5), "completion": " " + "xyz" * 6} for i in range(32)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = CustomTask(train_file=str(path), task_type="causal_lm", validation_ratio=0.25)
    data = TaskDataModule(task=task, objective="causal_lm", max_length=64, batch_size=4)
    llama = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64}  # fmt: skip
    module = AdapterModule(BackboneConfig(config=llama),
                           HRMConfig(d_state=8, gate_init=0.5, tbptt_chunk=16, state_clip=10.0),
                           optimizer=lambda p: torch.optim.AdamW(p, lr=1e-1), scheduler=None,
                           task_info=data.task_info)  # fmt: skip
    trainer = L.Trainer(max_epochs=10, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    before = trainer.validate(module, data, verbose=False)[0]["val/loss"]
    data.setup("fit")
    longest = max(len(r["input_ids"]) for r in data.splits["train"])
    assert longest > 2 * 16  # the training sequences do span several chunks
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]["val/loss"]
    # a random tiny backbone learns slowly either way (unchunked: 5.57 -> 5.18 here); a chunked
    # path that trained nothing would stay at 5.57
    assert after < before - 0.3, (before, after)
