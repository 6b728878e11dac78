"""The state methods on Mamba-1 and Mamba-2 (initial state, state offset, additional scan, SSM
prefix): zero effect at init, equality with the sequential float64 reference of the modified
recurrence, exact counts on Mamba-130M shapes, KV-cached decoding, clear errors.
(Gradients, save/load and the commands: tests/test_adapter_battery.py.)"""

import copy

import pytest
import torch
from transformers import AutoModel, MambaConfig

from ssmlora_app.adapters import (
    AdditionalScanConfig,
    InitialStateConfig,
    SSMPrefixConfig,
    StateOffsetConfig,
    count_trainable_parameters,
    inject_adapters,
)
from ssmlora_app.backbone import BackboneConfig, SSMForSequenceClassification, build_causal_lm
from ssmlora_app.errors import SsmloraError
from ssmlora_app.ssm.mamba_reference import mamba1_reference, mamba2_reference
from tests.test_adapter_battery import TINY_MAMBA, TINY_MAMBA2, model_for

CONFIGS = {
    "init_state": InitialStateConfig(),
    "init_state_conv": InitialStateConfig(conv_state=True),
    "state_offset": StateOffsetConfig(),
    "output_tuning": StateOffsetConfig(mode="output"),
    "additional_scan": AdditionalScanConfig(extra_states=3),
    "ssm_prefix": SSMPrefixConfig(num_virtual_tokens=5),
}
REFERENCES = {"mamba": mamba1_reference, "mamba2": mamba2_reference}


def inputs(seed: int = 1, width: int = 16):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 11, width, generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 7:] = 0  # right padding
    return hidden, mask


def randomise(module, seed: int = 2, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def reference_of(adapter, hidden, mask):
    extra = None
    if adapter.extra_B is not None:
        extra = (adapter.extra_B, adapter.extra_C)
        if adapter.kind == "mamba":
            extra = (adapter.extra_A_log, *extra)
    return REFERENCES[adapter.kind](
        adapter.base_layer, hidden, mask, initial_state=adapter.initial_state,
        conv_state=adapter.conv_state, state_offset=adapter.state_offset,
        output_bias=adapter.output_bias, extra=extra, prefix=adapter.prefix,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("row", sorted(CONFIGS))
def test_the_mixer_equals_the_sequential_float64_reference(kind, row):
    model = inject_adapters(model_for(kind), copy.deepcopy(CONFIGS[row]))
    adapter = model.backbone.layers[0].mixer
    with torch.no_grad():  # a conv bias, as pretrained models have (random init leaves it 0)
        adapter.base_layer.conv1d.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    randomise(adapter)
    hidden, mask = inputs()
    with torch.no_grad():
        ours = adapter(hidden, attention_mask=mask).double()
    expected = reference_of(adapter, hidden, mask)
    plain = REFERENCES[kind](adapter.base_layer, hidden, mask)
    scale = expected.abs().max()
    assert (ours - expected).abs().max() < 1e-5 * scale, row
    assert (plain - expected).abs().max() > 1e-3 * scale, f"{row}: the adapter changed nothing"


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_the_reference_itself_is_hfs_mixer_without_changes(kind):
    mixer = model_for(kind).backbone.layers[1].mixer
    hidden, mask = inputs(seed=4)
    with torch.no_grad():
        theirs = mixer(hidden, attention_mask=mask).double()
    expected = REFERENCES[kind](mixer, hidden, mask)
    assert (theirs - expected).abs().max() < 1e-5 * expected.abs().max()


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("row", sorted(set(CONFIGS) - {"ssm_prefix"}))
def test_zero_state_tensors_give_hfs_logits_bit_for_bit(kind, row):
    frozen = model_for(kind)
    ids = torch.randint(3, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    adapted = inject_adapters(copy.deepcopy(frozen), copy.deepcopy(CONFIGS[row]))
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids).logits, frozen(input_ids=ids).logits)


def test_a_zero_prefix_acts_through_the_conv_bias():
    frozen = model_for("mamba")
    ids = torch.randint(3, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    zero = inject_adapters(copy.deepcopy(frozen), SSMPrefixConfig(init_std=0.0))
    with (
        torch.no_grad()
    ):  # a random-init Mamba's conv bias is 0: zero virtual positions add nothing
        assert torch.equal(zero(input_ids=ids).logits, frozen(input_ids=ids).logits)
        for model in (frozen, zero):
            for layer in model.backbone.layers:
                mixer = getattr(layer.mixer, "base_layer", layer.mixer)
                mixer.conv1d.bias.fill_(0.3)
        assert not torch.allclose(zero(input_ids=ids).logits, frozen(input_ids=ids).logits)


def mamba_130m(kind: str = "mamba"):
    config = MambaConfig(hidden_size=768, num_hidden_layers=24, state_size=16, expand=2,
                         vocab_size=50280)  # fmt: skip
    config.num_labels = 2
    with torch.device("meta"):
        return SSMForSequenceClassification(AutoModel.from_config(config))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (InitialStateConfig(), 24 * 1536 * 16),  # 589,824, the number
        (InitialStateConfig(conv_state=True), 24 * (1536 * 16 + 1536 * 3)),  # 700,416
        (StateOffsetConfig(), 24 * 1536 * 16),
        (StateOffsetConfig(mode="output"), 24 * 1536),
        (AdditionalScanConfig(extra_states=8), 24 * 3 * 1536 * 8),  # 884,736
        (SSMPrefixConfig(num_virtual_tokens=16), 24 * 16 * 1536),
    ],
)
def test_trainable_counts_on_mamba_130m_shapes(config, expected):
    model = inject_adapters(mamba_130m(), config)
    assert count_trainable_parameters(model, include_head=False) == expected
    assert count_trainable_parameters(model) == expected + 768 * 2


def test_trainable_counts_on_mamba2_follow_the_shapes():
    layers, heads, head_dim, n, groups, d_m = 2, 8, 4, 8, 2, 16
    conv = heads * head_dim + 2 * groups * n
    expected = {
        "init_state": heads * head_dim * n,
        "init_state_conv": heads * head_dim * n + conv * 3,
        "state_offset": heads * head_dim * n,
        "output_tuning": heads * head_dim,
        "additional_scan": 2 * groups * 3 * d_m,
        "ssm_prefix": 5 * (conv + heads),
    }
    for row, per_layer in expected.items():
        model = inject_adapters(model_for("mamba2"), copy.deepcopy(CONFIGS[row]))
        assert count_trainable_parameters(model, include_head=False) == layers * per_layer, row


def tiny_lm(fields: dict):
    return build_causal_lm(BackboneConfig(config={**fields, "eos_token_id": 2}), 120, 1).eval()


@pytest.mark.parametrize("fields", [TINY_MAMBA, TINY_MAMBA2], ids=["mamba", "mamba2"])
@pytest.mark.parametrize("row", ["init_state", "init_state_conv", "ssm_prefix"])
def test_cached_decoding_equals_recomputing_the_whole_sequence(fields, row):
    """The prefill leaves the method's states in HF's cache; decoding steps then run HF's mixer
    and give the logits of a forward over the whole sequence."""
    model = inject_adapters(tiny_lm(fields), copy.deepcopy(CONFIGS[row]))
    randomise(model, scale=0.5)
    ids = torch.randint(3, 120, (2, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        prefill = model(ids[:, :6], use_cache=True)
        cache = prefill.cache
        steps = [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in (6, 7)]
        whole = model(ids, use_cache=False).logits
    torch.testing.assert_close(prefill.logits, whole[:, :6], rtol=1e-5, atol=1e-5)
    for t, step in zip((6, 7), steps, strict=True):
        torch.testing.assert_close(step[:, -1], whole[:, t], rtol=1e-4, atol=1e-5)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=1, eos_token_id=None)
    with torch.no_grad():  # and through generate
        cached = model.generate(ids, use_cache=True, **kwargs)
        assert torch.equal(cached, model.generate(ids, use_cache=False, **kwargs))


@pytest.mark.parametrize("row", ["state_offset", "additional_scan"])
def test_cached_decoding_is_refused_where_the_method_acts_at_every_step(row):
    model = inject_adapters(tiny_lm(TINY_MAMBA), copy.deepcopy(CONFIGS[row]))
    prompt = torch.randint(3, 120, (1, 6), generator=torch.Generator().manual_seed(5))
    with pytest.raises(SsmloraError, match="KV-cached decoding with them is not implemented"):
        model.generate(prompt, use_cache=True, max_new_tokens=2, do_sample=False, pad_token_id=1)
    with torch.no_grad():  # without a cache, each step re-reads the sequence: that works
        model.generate(prompt, use_cache=False, max_new_tokens=2, do_sample=False, pad_token_id=1)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (AdditionalScanConfig(extra_states=0), "extra_states must be a positive integer"),
        (StateOffsetConfig(mode="bias"), "mode must be one of"),
        (SSMPrefixConfig(num_virtual_tokens=0), "num_virtual_tokens must be a positive integer"),
        (SSMPrefixConfig(init_std=-1.0), "init_std must be ≥ 0"),
    ],
)
def test_bad_options_are_refused_at_injection(config, message):
    with pytest.raises(SsmloraError, match=message):
        inject_adapters(model_for("mamba"), config)


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_a_backbone_without_mamba_mixers_is_refused(config):
    with pytest.raises(SsmloraError, match="adapts Mamba mixers"):
        inject_adapters(model_for("roberta"), copy.deepcopy(config))
