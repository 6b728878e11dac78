"""SSMLoRA (Yu et al. 2025, arXiv 2502.04958): parameter counts, the per-forward state chain, numerics, save/load.

All offline: models are built from transformers configs with random weights; the exact
parameter counts of full-size models are taken on the meta device.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from ssmlora_app.adapters import (
    LoRAConfig,
    SSMLoRAConfig,
    SSMLoRALinear,
    count_trainable_parameters,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from ssmlora_app.adapters.ssmlora_presets import lora_baseline_config
from ssmlora_app.adapters.ssmlora_stats import ssmlora_diagnostics
from ssmlora_app.callbacks import AdapterDiagnostics
from ssmlora_app.errors import SsmloraError

R = 8
TINY = {
    "roberta": dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ),
    "bert": dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=0,
    ),
    "deberta-v2": dict(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        pad_token_id=0,
    ),
    "gpt2": dict(vocab_size=120, n_embd=32, n_layer=4, n_head=4, n_positions=40, pad_token_id=0),
    "llama": dict(
        vocab_size=120,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    ),
    "mistral": dict(
        vocab_size=120,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
    ),
}


def tiny(model_type: str = "roberta", seed: int = 0, num_labels: int = 2):
    config = AutoConfig.for_model(model_type, num_labels=num_labels, **TINY[model_type])
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


def meta(model_type: str, num_labels: int = 2, **fields):
    config = AutoConfig.for_model(model_type, num_labels=num_labels, **fields)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def ssm_layers(model) -> dict[str, SSMLoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SSMLoRALinear)}


def randomise_state_params(model, std: float = 0.2, seed: int = 1) -> None:
    """Random W_b, W_c, W_d so that the state term is non-zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ssm_layers(model).values():
            for p in (layer.W_b, layer.W_c, layer.W_d):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def batch(n: int = 4, length: int = 12, seed: int = 0, pad_id: int = 1):
    """Right-padded ids (never 0..2 except padding) with different lengths per row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):
        keep = length - (i * 3) % (length - 2)
        ids[i, keep:] = pad_id
        mask[i, keep:] = 0
    return ids, mask


# ---- parameter counts (the SSMLoRA paper's settings), on the meta device -------------------------

ROBERTA_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
)
LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
)


@pytest.mark.parametrize(
    ("model_type", "fields", "preset", "ssmlora", "lora"),
    [
        ("roberta", {}, "full_model", 1_057_040, 1_345_552),
        ("roberta", ROBERTA_LARGE, "attention_sparse", 396_288, 786_432),
        ("gpt2", {}, "attention_sparse", 148_224, 294_912),
        ("llama", LLAMA2_7B, "full_model", 15_847_568, 20_021_264),
    ],
    ids=["roberta-base-full", "roberta-large-sparse", "gpt2-sparse", "llama2-7b-full"],
)
def test_parameter_counts(model_type, fields, preset, ssmlora, lora):
    model = inject_adapters(meta(model_type, **fields), SSMLoRAConfig(preset=preset, r=R))
    assert count_trainable_parameters(model, include_head=False) == ssmlora
    for layer in ssm_layers(model).values():  # r(d_in + d_out) + 2r² per module, all fp32
        d_in, d_out = layer.W_a.shape[0], layer.W_b.shape[1]
        assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == (
            R * (d_in + d_out) + 2 * R * R
        )
        assert all(p.dtype == torch.float32 for p in (layer.W_a, layer.W_b, layer.W_c, layer.W_d))
    baseline = meta(model_type, **fields)
    inject_adapters(baseline, lora_baseline_config(baseline, preset, r=R, alpha=16))
    assert count_trainable_parameters(baseline, include_head=False) == lora


def test_lora_baseline_is_plain_lora_config():
    """The full_model LoRA baseline = our LoRAConfig on q,k,v,o,FFN-in,FFN-out + head linears."""
    model = meta("roberta")
    targets = [
        "query",
        "key",
        "value",
        "attention.output.dense",
        "intermediate.dense",
        r"layer.\d+.output.dense",
    ]
    pattern = r".*\.(" + "|".join(targets) + r")|classifier\.(dense|out_proj)"
    inject_adapters(model, LoRAConfig(r=R, alpha=16, target_modules=pattern, modules_to_save=[]))
    assert count_trainable_parameters(model) == 1_345_552


# ---- presets on every supported architecture --------------------------------------------------

EXPECTED_SPARSE = {
    "roberta": ["layer.0.attention.self.query", "layer.1.attention.self.value"],
    "bert": ["layer.0.attention.self.query", "layer.1.attention.self.value"],
    "deberta-v2": ["layer.0.attention.self.query_proj", "layer.1.attention.self.value_proj"],
    "gpt2": ["h.0.attn.c_attn", "h.2.attn.c_attn"],
    "llama": ["layers.0.self_attn.q_proj", "layers.1.self_attn.v_proj"],
    "mistral": ["layers.0.self_attn.q_proj", "layers.1.self_attn.v_proj"],
}
EXPECTED_HEAD = {
    "roberta": ["classifier.dense", "classifier.out_proj"],
    "bert": ["classifier"],
    "deberta-v2": ["pooler.dense", "classifier"],
    "gpt2": ["score"],
    "llama": ["score"],
    "mistral": ["score"],
}


@pytest.mark.parametrize("model_type", list(TINY))
def test_presets_and_zero_output_at_init(model_type):
    frozen = tiny(model_type)
    ids, mask = batch(pad_id=TINY[model_type]["pad_token_id"])
    expected = frozen(input_ids=ids, attention_mask=mask).logits

    sparse = inject_adapters(copy.deepcopy(frozen), SSMLoRAConfig(preset="attention_sparse"))
    names = list(ssm_layers(sparse))
    assert len(names) == (2 if model_type == "gpt2" else 4)
    for suffix in EXPECTED_SPARSE[model_type]:
        assert any(n.endswith(suffix) for n in names), (suffix, names)
    assert not any("key" in n or "k_proj" in n for n in names)

    full = inject_adapters(copy.deepcopy(frozen), SSMLoRAConfig(preset="full_model"))
    layers = ssm_layers(full)
    per_layer = {"gpt2": 3, "llama": 4, "mistral": 4}.get(model_type, 3)
    heads = EXPECTED_HEAD[model_type]
    n_q_or_v = 2 if model_type == "gpt2" else 4
    assert len(layers) == n_q_or_v + 4 * per_layer + len(heads)
    assert [n for n in layers if n.split(".")[0] in ("classifier", "pooler", "score")] == heads
    assert {layers[h].chain for h in heads} == {"head"}
    assert [layers[h].position for h in heads] == list(range(len(heads)))
    # Nothing is trained fully under full_model: the head learns through its adapters.
    trainable = {n for n, p in full.named_parameters() if p.requires_grad}
    assert all(n.rsplit(".", 1)[1] in ("W_a", "W_b", "W_c", "W_d") for n in trainable)

    for model in (sparse, full):  # W_b = 0: exactly the frozen model's output
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, expected)


def test_chains_are_per_type_in_layer_order():
    model = inject_adapters(tiny(), SSMLoRAConfig())
    layers = ssm_layers(model)
    query = [n for n, m in layers.items() if m.chain.endswith("attention.self.query")]
    value = [n for n, m in layers.items() if m.chain.endswith("attention.self.value")]
    assert [layers[n].position for n in query] == [0, 1]
    assert ["layer.0." in query[0], "layer.2." in query[1]] == [True, True]
    assert ["layer.1." in value[0], "layer.3." in value[1]] == [True, True]
    ffn_in = [m.position for m in layers.values() if m.chain.endswith("intermediate.dense")]
    assert ffn_in == [0, 1, 2, 3]


def test_explicit_targets_and_custom_chains():
    config = SSMLoRAConfig(
        preset=None,
        target_modules=["query", "value"],
        chains={"attention": ["query", "value"]},
    )
    model = inject_adapters(tiny(), config)
    layers = ssm_layers(model)
    assert {m.chain for m in layers.values()} == {"attention"}
    assert [m.position for m in layers.values()] == list(range(8))
    ids, mask = batch()
    randomise_state_params(model)
    assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()


def test_modules_to_save_keeps_head_out_of_full_model():
    model = inject_adapters(tiny(), SSMLoRAConfig(modules_to_save=["classifier"]))
    assert not any(n.startswith("classifier") for n in ssm_layers(model))
    assert model.classifier.dense.weight.requires_grad


def test_config_errors():
    with pytest.raises(SsmloraError, match="preset: null"):
        SSMLoRAConfig(target_modules=["query"]).validate()
    with pytest.raises(SsmloraError, match="preset"):
        SSMLoRAConfig(preset=None).validate()
    with pytest.raises(SsmloraError, match="norm"):
        SSMLoRAConfig(norm="batchnorm").validate()
    with pytest.raises(SsmloraError, match="model_type"):
        inject_adapters(nn.Sequential(nn.Linear(4, 4)), SSMLoRAConfig())
    with pytest.raises(SsmloraError, match="exactly one"):
        inject_adapters(tiny(), SSMLoRAConfig(chains={"q": ["query"]}))


# ---- the chain is per forward: batch composition, order, earlier calls -------------------------


@pytest.mark.parametrize("model_type", ["roberta", "llama"])
def test_example_independent_of_batch(model_type):
    pad = TINY[model_type]["pad_token_id"]
    model = inject_adapters(tiny(model_type), SSMLoRAConfig(norm="minmax"))
    randomise_state_params(model)
    ids, mask = batch(pad_id=pad)
    reference = inject_adapters(tiny(model_type), SSMLoRAConfig())
    together = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(together, reference(input_ids=ids, attention_mask=mask).logits)
    order = torch.tensor([2, 0, 3, 1])
    shuffled = model(input_ids=ids[order], attention_mask=mask[order]).logits
    torch.testing.assert_close(shuffled, together[order], atol=1e-6, rtol=0)
    other_ids, other_mask = batch(n=5, length=12, seed=7, pad_id=pad)
    model.train()
    model(input_ids=other_ids, attention_mask=other_mask)  # a training forward in between
    model.eval()
    for i in range(len(ids)):
        alone = model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits
        torch.testing.assert_close(alone[0], together[i], atol=1e-6, rtol=0)
        mixed_ids = torch.cat([other_ids, ids[i : i + 1]])
        mixed_mask = torch.cat([other_mask, mask[i : i + 1]])
        mixed = model(input_ids=mixed_ids, attention_mask=mixed_mask).logits
        torch.testing.assert_close(mixed[-1], together[i], atol=1e-6, rtol=0)


# ---- gradient checkpointing and training ------------------------------------------------------


def _grads(model, ids, mask, labels, checkpointing: bool) -> dict[str, torch.Tensor]:
    calls = []
    handles = [
        m.register_forward_hook(lambda *a: calls.append(1)) for m in ssm_layers(model).values()
    ]
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model.zero_grad()
    torch.manual_seed(3)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, len(calls)


@pytest.mark.parametrize("detach_state", [True, False])
def test_gradient_checkpointing_gives_same_gradients(detach_state):
    config = SSMLoRAConfig(detach_state=detach_state, dropout=0.1, input_dropout=0.1)
    plain = inject_adapters(tiny(), config)
    randomise_state_params(plain)
    checkpointed = copy.deepcopy(plain)
    ids, mask = batch()
    labels = torch.tensor([0, 1, 1, 0])
    expected, plain_calls = _grads(plain, ids, mask, labels, checkpointing=False)
    got, checkpointed_calls = _grads(checkpointed, ids, mask, labels, checkpointing=True)
    assert checkpointed_calls > plain_calls  # the layers really were recomputed
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for n, g in expected.items() if n.endswith("W_c"))


def test_detach_state_controls_backprop_through_depth():
    """detach_state=False keeps the passed states in the graph, so gradients differ."""
    ids, mask = batch()
    labels = torch.tensor([0, 1, 1, 0])
    grads = {}
    for detach in (True, False):
        model = inject_adapters(tiny(), SSMLoRAConfig(detach_state=detach, dropout=0.0))
        randomise_state_params(model)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        first = model.roberta.encoder.layer[0].intermediate.dense
        state = first.state_chain.states[(first.chain, 0)]
        assert state.requires_grad == (not detach)
        grads[detach] = first.W_d.grad
    assert not torch.allclose(grads[True], grads[False])


def test_optimizer_steps_change_every_trainable_parameter_and_nothing_else():
    model = inject_adapters(tiny(), SSMLoRAConfig())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = batch()
    labels = torch.tensor([0, 1, 1, 0])
    model.train()
    for _ in range(4):
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
    after = model.state_dict()
    layers = ssm_layers(model)
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        if key in trainable:
            layer, param = key.rsplit(".", 1)
            # W_c at a chain's first position multiplies a zero state: it never gets gradient
            # (it is kept so the count is the paper's r(d_in + d_out) + 2r² per module).
            assert changed == (param != "W_c" or layers[layer].position > 0), key
        else:
            assert not changed, key


# ---- numerics ----------------------------------------------------------------------------------


class ToyStack(nn.Module):
    """Three ``x ← tanh(proj(x))`` blocks: one chain ``layers.*.proj`` of three positions."""

    def __init__(self, d: int = 6, n: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(nn.Module() for _ in range(n))
        for block in self.layers:
            block.proj = nn.Linear(d, d)

    def forward(self, x):
        for block in self.layers:
            x = torch.tanh(block.proj(x))
        return x


def reference_forward(model: ToyStack, x: torch.Tensor, config: SSMLoRAConfig) -> torch.Tensor:
    """Spec §2.1 in float64, written out: u, h_new, ĥ, y per module, ĥ passed along depth."""
    x = x.double()
    scale = config.alpha / config.r if config.scale_mode == "alpha_over_r" else config.alpha
    h_prev = torch.zeros(*x.shape[:-1], config.r, dtype=torch.float64)
    eye = torch.eye(config.r, dtype=torch.float64)
    for block in model.layers:
        m = block.proj
        w0, b0 = m.base_layer.weight.double(), m.base_layer.bias.double()
        w_a, w_b, w_c, w_d = (p.detach().double() for p in (m.W_a, m.W_b, m.W_c, m.W_d))
        u = x @ w_a
        h_new = h_prev @ (eye + w_c) + u @ w_d
        if config.norm == "minmax":
            low, high = h_new.min(-1, keepdim=True).values, h_new.max(-1, keepdim=True).values
            h_hat = (h_new - low) / (high - low + config.eps)
        elif config.norm == "layernorm":
            mean = h_new.mean(-1, keepdim=True)
            var = h_new.var(-1, unbiased=False, keepdim=True)
            h_hat = (h_new - mean) / torch.sqrt(var + config.eps)
        else:
            h_hat = h_new
        x = torch.tanh(x @ w0.T + b0 + scale * (u + h_hat) @ w_b)
        h_prev = h_hat if config.pass_normalised_state else h_new
    return x


@pytest.mark.parametrize("norm", ["minmax", "layernorm", "none"])
@pytest.mark.parametrize("pass_normalised_state", [True, False])
@pytest.mark.parametrize("scale_mode", ["alpha_over_r", "alpha"])
def test_matches_float64_reference(norm, pass_normalised_state, scale_mode):
    config = SSMLoRAConfig(
        preset=None,
        target_modules=["proj"],
        r=4,
        alpha=8,
        norm=norm,
        pass_normalised_state=pass_normalised_state,
        scale_mode=scale_mode,
    )
    torch.manual_seed(0)
    model = inject_adapters(ToyStack(), config).eval()
    randomise_state_params(model, std=0.5)
    x = torch.randn(2, 5, 6)
    expected = reference_forward(model, x, config)
    # fp32: rounding of the state is amplified by the min-max division (1 / range of h) and by
    # scale (8 under scale_mode alpha), so 1e-5 is too tight for some draws; the float64 run
    # below checks the arithmetic itself to 1e-12.
    torch.testing.assert_close(model(x).double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.double()(x.double()), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_first_steps_finite_under_autocast(dtype):
    model = inject_adapters(tiny(), SSMLoRAConfig(scale_mode="alpha"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids, mask = batch()
    labels = torch.tensor([0, 1, 1, 0])
    model.train()
    for _ in range(5):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:  # None only for W_c at a chain's first position
                assert torch.isfinite(p.grad).all(), name
        optimizer.step()
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


# ---- save / load, merge, diagnostics ---------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = inject_adapters(tiny(), SSMLoRAConfig(preset="attention_sparse", norm="layernorm"))
    randomise_state_params(model)
    with torch.no_grad():
        model.classifier.dense.weight.normal_()  # the fully trained head of attention_sparse
    ids, mask = batch()
    expected = model(input_ids=ids, attention_mask=mask).logits
    save_adapter(model, tmp_path / "adapter")
    restored = load_adapter(tiny(), tmp_path / "adapter")
    assert restored.ssmlora_config == model.ssmlora_config
    torch.testing.assert_close(
        restored(input_ids=ids, attention_mask=mask).logits, expected, atol=0, rtol=0
    )


def test_merge_is_a_clear_error():
    model = inject_adapters(tiny(), SSMLoRAConfig())
    with pytest.raises(SsmloraError, match="cannot be merged"):
        merge_adapters(model)


def test_diagnostics_and_callback():
    model = inject_adapters(tiny(), SSMLoRAConfig())
    metrics = ssmlora_diagnostics(model)
    assert all(v == pytest.approx(1.0) for k, v in metrics.items() if "spectral" in k)
    randomise_state_params(model)
    ids, mask = batch()
    model(input_ids=ids, attention_mask=mask)
    metrics = ssmlora_diagnostics(model)
    chains = {m.chain for m in ssm_layers(model).values()}
    assert {f"ssmlora/{c}/state_norm" for c in chains} <= metrics.keys()
    r = next(iter(ssm_layers(model).values())).W_a.shape[1]
    radius: dict[str, float] = {}  # max over a chain's modules of ρ(I + W_c), computed apart
    for layer in ssm_layers(model).values():
        eigenvalues = np.linalg.eigvals(np.eye(r) + layer.W_c.detach().double().numpy())
        radius[layer.chain] = max(radius.get(layer.chain, 0.0), float(np.abs(eigenvalues).max()))
    for chain, value in radius.items():
        assert metrics[f"ssmlora/{chain}/spectral_radius"] == pytest.approx(value, rel=1e-9)
        assert abs(value - 1.0) > 1e-3  # the randomised W_c moved it from 1
    for chain in chains:  # min-max states lie in [0, 1]^r: their norm in (0, √r]
        assert 0 < metrics[f"ssmlora/{chain}/state_norm"] <= r**0.5 + 1e-6

    logged = []
    logger = SimpleNamespace(log_metrics=lambda m, step: logged.append((step, m)))
    trainer = SimpleNamespace(global_step=4, loggers=[logger], is_global_zero=True)
    callback = AdapterDiagnostics(every_n_steps=2)
    module = SimpleNamespace(model=model)
    callback.on_train_batch_end(trainer, module, None, None, 0)
    callback.on_train_batch_end(trainer, module, None, None, 1)  # same step: logged once
    trainer.global_step = 5
    callback.on_train_batch_end(trainer, module, None, None, 2)
    assert [step for step, _ in logged] == [4]
    assert logged[0][1].keys() == metrics.keys()


# ---- shipped configs ---------------------------------------------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BACKBONES = {"roberta-base": ("roberta", {}), "roberta-large": ("roberta", ROBERTA_LARGE)}
BACKBONES["gpt2"] = ("gpt2", {})
# DeBERTaV3-base's shapes (configs/deberta-v3-base_squad.yaml)
BACKBONES["microsoft/deberta-v3-base"] = ("deberta-v2", {"vocab_size": 128100,
                                                         "relative_attention": True,
                                                         "position_buckets": 256,
                                                         "pos_att_type": ["p2c", "c2p"]})  # fmt: skip
# all-MiniLM-L6-v2's shapes (configs/quickstart.yaml; the real weights come from `make weights`)
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "vocab_size": 30522}  # fmt: skip
BACKBONES["~/.cache/ssmlora/weights/all-MiniLM-L6-v2"] = ("bert", MINILM)
NUM_LABELS = {"stsb": 1, "mnli": 3}
SST2_COUNTS = {"roberta-base": 1_057_040, "roberta-large": 396_288, "gpt2": 148_224}
SSMLORA_CONFIGS = sorted(
    p.name
    for p in CONFIGS.glob("*.yaml")
    if (yaml.safe_load(p.read_text()).get("model") or {}).get("adapter", {}).get("class_path")
    == "ssmlora_app.adapters.SSMLoRAConfig"
)


def test_every_glue_task_has_ssmlora_configs():
    tasks = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    expected = {f"roberta_{t}.yaml" for t in tasks}
    expected |= {f"roberta-large_{t}_sparse.yaml" for t in ["sst2", "rte", "cola", "mrpc", "qnli"]}
    expected.add("gpt2_sst2_sparse.yaml")
    assert expected <= set(SSMLORA_CONFIGS)


@pytest.mark.parametrize("name", SSMLORA_CONFIGS)
def test_ssmlora_config_instantiates(name):
    """The adapter section builds an SSMLoRAConfig that injects into the named backbone's shapes
    (meta device, no download) with the documented parameter count."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    adapter = config["model"]["adapter"]
    assert adapter["class_path"] == "ssmlora_app.adapters.SSMLoRAConfig"
    ssmlora = SSMLoRAConfig(**adapter["init_args"])
    backbone = config["model"]["backbone"]["name_or_path"]
    model_type, fields = BACKBONES[backbone]
    task = config["data"]["task"]
    model = inject_adapters(meta(model_type, NUM_LABELS.get(task, 2), **fields), ssmlora)
    count = count_trainable_parameters(model, include_head=False)
    expected = sum(
        R * (m.W_a.shape[0] + m.W_b.shape[1]) + 2 * R * R for m in ssm_layers(model).values()
    )
    assert count == expected
    if task == "sst2":
        assert count == SST2_COUNTS[backbone]


def test_full_model_adapter_initialises_another_task_without_its_head(tmp_path):
    """The LoRA/SSMLoRA GLUE recipe starts MRPC from the MNLI adapter (3 labels -> 2)."""
    from ssmlora_app.adapters import load_adapter, save_adapter

    mnli = inject_adapters(tiny(num_labels=3), SSMLoRAConfig(preset="full_model"))
    randomise_state_params(mnli)
    save_adapter(mnli, tmp_path / "mnli")
    mrpc = inject_adapters(tiny(num_labels=2), SSMLoRAConfig(preset="full_model"))
    with pytest.raises(SsmloraError, match="does not fit"):
        load_adapter(mrpc, tmp_path / "mnli")
    load_adapter(mrpc, tmp_path / "mnli", load_head=False)
    source = dict(mnli.named_parameters())
    loaded = [
        n for n, p in mrpc.named_parameters() if "W_" in n and not n.startswith("classifier.")
    ]
    assert loaded and all(torch.equal(dict(mrpc.named_parameters())[n], source[n]) for n in loaded)
