"""HRM adapter: counts, exactness at gate 0, gradients, FFT vs sequential, save/load, generation."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    RobertaConfig,
)

from ssmlora_app.adapters import (
    HRMConfig,
    HRMLayer,
    count_trainable_parameters,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from ssmlora_app.adapters.hrm import hrm_diagnostics, hrm_generation
from ssmlora_app.callbacks import AdapterDiagnostics
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import param_groups

D = 32


def tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of ``arch`` (same weights for the same seed)."""
    torch.manual_seed(seed)
    common = {"vocab_size": 97, "hidden_size": D, "num_attention_heads": 4}
    if arch == "llama":
        cfg = LlamaConfig(**common, intermediate_size=64, num_hidden_layers=2)
        return AutoModelForCausalLM.from_config(cfg).eval()
    if arch == "mistral":
        cfg = MistralConfig(
            **common, intermediate_size=64, num_hidden_layers=2, num_key_value_heads=2
        )
        return AutoModelForCausalLM.from_config(cfg).eval()
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=97, n_embd=D, n_head=4, n_layer=2, n_positions=64)
        return AutoModelForCausalLM.from_config(cfg).eval()
    config_cls = BertConfig if arch == "bert" else RobertaConfig
    cfg = config_cls(**common, intermediate_size=64, num_hidden_layers=2, num_labels=3)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def ids(length: int = 12, batch: int = 2) -> torch.Tensor:
    return torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(0))


def logits(model, x):
    with torch.no_grad():
        return model(input_ids=x).logits


def test_mistral_7b_count_on_meta():
    cfg = MistralConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    inject_adapters(model, HRMConfig(d_state=32))
    assert count_trainable_parameters(model, include_head=False) == 8_390_688
    assert 32 * (2 * 32 * 4096 + 2 * 32 + 1) == 8_390_688


WRAPPED = {
    "llama": "model.layers.{}.mlp",
    "mistral": "model.layers.{}.mlp",
    "gpt2": "transformer.h.{}.mlp",
    "roberta": "roberta.encoder.layer.{}.output",
    "bert": "bert.encoder.layer.{}.output",
}


@pytest.mark.parametrize("arch", list(WRAPPED))
def test_gate_zero_is_frozen_model_and_gate_init_is_close(arch):
    x = ids()
    frozen = logits(tiny(arch), x)
    model = inject_adapters(tiny(arch), HRMConfig(d_state=4, gate_init=0.0))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, HRMLayer)]
    assert wrapped == [WRAPPED[arch].format(i) for i in range(2)]
    assert torch.equal(logits(model, x), frozen)
    model = inject_adapters(tiny(arch), HRMConfig(d_state=4))
    out = logits(model, x)
    assert not torch.equal(out, frozen)
    assert torch.allclose(out, frozen, atol=0.05)


@pytest.mark.parametrize("arch", ["llama", "roberta"])
def test_gradients_reach_exactly_the_trainable_params(arch):
    model = inject_adapters(tiny(arch), HRMConfig(d_state=4))
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    suffixes = {"log_A", "log_dt", "B", "C", "gate"}
    ssm = {n for n in trainable if n.rsplit(".", 1)[1] in suffixes}
    assert len(ssm) == 2 * len(suffixes)
    heads = trainable - ssm
    assert all(n.startswith("classifier.") for n in heads)
    assert bool(heads) == (arch == "roberta")
    model(input_ids=ids()).logits.square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    no_decay = {id(p) for g in param_groups(model) if g["name"] == "no_decay" for p in g["params"]}
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[1] in {"log_A", "log_dt", "gate"}:
            assert id(p) in no_decay


@pytest.mark.parametrize("arch", ["mistral", "gpt2", "roberta"])
def test_fft_equals_sequential_through_the_model(arch):
    x = ids(length=40)
    model = inject_adapters(tiny(arch), HRMConfig(d_state=8, gate_init=1.0))
    fft = logits(model, x)
    for layer in hrm_diagnostics(model):
        model.get_submodule(layer).scan = "sequential"
    seq = logits(model, x)
    assert torch.allclose(fft, seq, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fft, logits(tiny(arch), x), rtol=1e-3, atol=1e-5)


def test_layer_matches_float64_spec_reference():
    torch.manual_seed(1)
    mlp = torch.nn.Linear(D, D)
    layer = HRMLayer(mlp, D, 6, gate_init=0.5)
    u = torch.randn(2, 30, D)
    out = layer(u)
    p = {k: v.detach().double() for k, v in layer.named_parameters() if "base" not in k}
    a = -torch.exp(p["log_A"])
    dt = torch.log1p(torch.exp(p["log_dt"]))
    A_bar = torch.exp(dt * a)
    B_bar = ((A_bar - 1) / a)[:, None] * p["B"]
    s, ys = torch.zeros(2, 6, dtype=torch.float64), []
    for u_t in u.double().unbind(1):
        s = A_bar * s + u_t @ B_bar.T
        ys.append(s @ p["C"].T)
    ref = mlp(u).double() + p["gate"] * torch.stack(ys, 1)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert ((A_bar > 0) & (A_bar < 1)).all()


def test_init_and_config_errors():
    layer = HRMLayer(torch.nn.Linear(D, D), D, 8)
    assert torch.allclose(layer.log_A.exp(), torch.arange(1.0, 9.0))
    dt = torch.nn.functional.softplus(layer.log_dt)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 1e-1 * 1.001)).all()
    assert float(layer.gate.detach()) == pytest.approx(0.01)
    assert all(p.dtype == torch.float32 for n, p in layer.named_parameters() if "base" not in n)
    assert sum(p.numel() for n, p in layer.named_parameters() if "base" not in n) == (
        2 * 8 * D + 2 * 8 + 1
    )
    with pytest.raises(SsmloraError, match="scan"):
        HRMConfig(scan="parallel").validate()
    with pytest.raises(SsmloraError, match="d_state"):
        inject_adapters(tiny("llama"), HRMConfig(d_state=0))
    with pytest.raises(SsmloraError, match="dt_min"):
        HRMConfig(dt_min=0.1, dt_max=0.01).validate()
    with pytest.raises(SsmloraError, match="matches no layer"):
        inject_adapters(tiny("llama"), HRMConfig(target_modules=["q_proj"]))


def test_layers_to_transform_and_merge_refused():
    model = inject_adapters(tiny("llama"), HRMConfig(d_state=4, layers_to_transform=[1]))
    assert list(hrm_diagnostics(model)) == ["model.layers.1.mlp"]
    with pytest.raises(SsmloraError, match="cannot be merged"):
        merge_adapters(model)


def test_save_load_round_trip(tmp_path):
    x = ids()
    model = inject_adapters(tiny("roberta"), HRMConfig(d_state=4, gate_init=0.3))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    save_adapter(model, tmp_path)
    loaded = load_adapter(tiny("roberta"), tmp_path)
    assert torch.equal(logits(loaded, x), logits(model, x))
    assert loaded.ssmlora_config == model.ssmlora_config


def test_an_adapter_saved_with_a_0d_gate_still_loads(tmp_path):
    """The gate is (1,) since FSDP refuses 0-d parameters; adapters saved before hold a 0-d one."""
    from safetensors.torch import load_file, save_file

    x = ids()
    model = inject_adapters(tiny("roberta"), HRMConfig(d_state=4, gate_init=0.3))
    folder = save_adapter(model, tmp_path)
    weights = next(folder.glob("*.safetensors"))
    tensors = load_file(weights)
    gates = [k for k in tensors if k.endswith(".gate")]
    assert gates and all(tensors[k].shape == (1,) for k in gates)
    save_file({k: v.reshape(()) if k in gates else v for k, v in tensors.items()}, weights)
    loaded = load_adapter(tiny("roberta"), tmp_path)
    assert torch.equal(logits(loaded, x), logits(model, x))


def test_diagnostics():
    model = inject_adapters(tiny("gpt2"), HRMConfig(d_state=4, gate_init=0.02))
    stats = hrm_diagnostics(model)
    assert len(stats) == 2
    for s in stats.values():
        assert s.gate == pytest.approx(0.02)
        assert s.decay.shape == (4,) and ((s.decay > 0) & (s.decay < 1)).all()
        assert (s.timescale > 0).all()


def test_generation_with_and_without_kv_cache():
    model = inject_adapters(tiny("llama"), HRMConfig(d_state=8, gate_init=3.0))
    prompt = ids(length=6, batch=1)
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    no_cache = model.generate(prompt, use_cache=False, **kw)
    with hrm_generation(model):
        cached = model.generate(prompt, use_cache=True, **kw)
    assert torch.equal(cached, no_cache)
    # without carrying the state, the cached decode steps would restart the SSM at zero
    assert not torch.equal(model.generate(prompt, use_cache=True, **kw), no_cache)
    # and the decode step carried a state: the last logits match the full recomputation
    with torch.no_grad(), hrm_generation(model):
        out = model(input_ids=cached[:, :-1], use_cache=True)
        step = model(
            input_ids=cached[:, -1:], past_key_values=out.past_key_values, use_cache=True
        ).logits[:, -1]
    full = logits(model, cached)[:, -1]
    assert torch.allclose(step, full, atol=1e-4)
    assert not math.isclose(float((step - logits(tiny("llama"), cached)[:, -1]).abs().max()), 0)


def test_diagnostics_callback_writes_tensorboard(tmp_path):
    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = inject_adapters(tiny("gpt2"), HRMConfig(d_state=4))

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0]).logits.square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids(8, 4)), batch_size=2)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = L.Trainer(
        max_epochs=1,
        logger=logger,
        callbacks=[AdapterDiagnostics(every_n_steps=1)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), data)
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0}).Reload()
    tags = events.Tags()
    assert "hrm/gate/transformer.h.0.mlp" in tags["scalars"]
    assert "hrm/A_bar" in tags["histograms"]
    assert "hrm/A_bar/transformer.h.1.mlp" in tags["histograms"]


def test_bf16_backbone_keeps_fp32_adapter():
    x = ids()
    frozen = logits(tiny("llama").to(torch.bfloat16), x)
    model = inject_adapters(tiny("llama").to(torch.bfloat16), HRMConfig(d_state=4, gate_init=0.0))
    layer = model.get_submodule("model.layers.0.mlp")
    assert all(p.dtype == torch.float32 for n, p in layer.named_parameters() if "base" not in n)
    out = logits(model, x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, frozen)
    with torch.no_grad():
        layer.gate.fill_(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(input_ids=x).logits).all()


def test_gate_only_training_freezes_the_ssm():
    from ssmlora_app.adapters import HRMConfig, adapter_state_dict, inject_adapters
    from tests.helpers import tiny_classifier

    model = inject_adapters(
        tiny_classifier(), HRMConfig(d_state=4, train="gate", modules_to_save=[])
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".gate") for n in trainable)
    saved = {k.rsplit(".", 1)[1] for k in adapter_state_dict(model)}
    assert {
        "log_A",
        "log_dt",
        "B",
        "C",
        "gate",
    } <= saved  # frozen SSM tensors are still the adapter
