"""LoRA/DoRA on Mamba's mixer parts and layer freeze: what each part is, equality with ``peft``'s
DoRA, exact counts on Mamba-130M shapes, what trains, clear errors. (Zero effect at init,
gradients, save/load, merge and the commands: tests/test_adapter_battery.py.)"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from ssmlora_app.adapters import (
    BitFitConfig,
    LayerFreezeConfig,
    MambaLoRAConfig,
    count_trainable_parameters,
    inject_adapters,
    merge_and_unload,
)
from ssmlora_app.adapters.mamba_lora import BlockLoRA
from ssmlora_app.adapters.mamba_targets import Part
from ssmlora_app.errors import SsmloraError
from tests.test_adapter_battery import model_for
from tests.test_mamba_state import mamba_130m, randomise


def effective(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().clone()


def test_lora_on_in_proj_x_changes_the_x_rows_only():
    frozen = model_for("mamba")
    model = inject_adapters(copy.deepcopy(frozen), MambaLoRAConfig(target_modules=["in_proj_x"]))
    randomise(model)
    mixer, plain = model.backbone.layers[0].mixer, frozen.backbone.layers[0].mixer
    d = mixer.intermediate_size
    layer = mixer.in_proj.parametrizations.weight[0]
    weight = effective(mixer.in_proj)
    assert torch.equal(weight[d:], plain.in_proj.weight[d:])  # z untouched
    update = layer.scaling * layer.lora_B.weight @ layer.lora_A.weight  # (D, D_m)
    torch.testing.assert_close(weight[:d], plain.in_proj.weight[:d] + update)
    assert layer.lora_A.weight.shape == (8, 16) and layer.lora_B.weight.shape == (d, 8)


def test_lora_on_x_proj_rows_and_conv1d_reads_each_block():
    frozen = model_for("mamba")
    config = MambaLoRAConfig(target_modules=["x_proj_B", "x_proj_C", "conv1d"], r=2)
    model = inject_adapters(copy.deepcopy(frozen), config)
    randomise(model)
    mixer, plain = model.backbone.layers[1].mixer, frozen.backbone.layers[1].mixer
    r, n = mixer.time_step_rank, mixer.ssm_state_size
    weight = effective(mixer.x_proj)
    assert torch.equal(weight[:r], plain.x_proj.weight[:r])  # the Δ rows untouched
    for i, start in enumerate((r, r + n)):
        layer = mixer.x_proj.parametrizations.weight[i]
        update = layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
        torch.testing.assert_close(
            weight[start : start + n], plain.x_proj.weight[start : start + n] + update
        )
    conv = mixer.conv1d.parametrizations.weight[0]  # (C, 1, k) seen as (C, k): rank ≤ k
    update = (conv.scaling * conv.lora_B.weight @ conv.lora_A.weight)[:, None, :]
    torch.testing.assert_close(effective(mixer.conv1d), plain.conv1d.weight + update)


def test_lora_on_the_embeddings_adds_a_low_rank_table():
    frozen = model_for("mamba")
    model = inject_adapters(copy.deepcopy(frozen), MambaLoRAConfig(target_modules=["embeddings"]))
    randomise(model)
    layer = model.backbone.embeddings
    ids = torch.tensor([[3, 7, 11]])
    table = (
        frozen.backbone.embeddings.weight
        + layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight).T
    )
    with torch.no_grad():
        torch.testing.assert_close(layer(ids), table[ids])


def test_dora_equals_peft_dora_on_a_linear_and_its_gradients():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 10, bias=False))
    theirs = peft.get_peft_model(
        copy.deepcopy(net),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"], use_dora=True, lora_dropout=0.0),
    )
    lin = theirs.base_model.model[0]
    with torch.no_grad():
        lin.lora_B["default"].weight.normal_()
        lin.lora_magnitude_vector["default"].weight.mul_(1.3)
    ours = BlockLoRA(net[0], Part("0", 0, 10), r=4, scaling=2.0, dora=True)
    with torch.no_grad():
        ours.lora_A.weight.copy_(lin.lora_A["default"].weight)
        ours.lora_B.weight.copy_(lin.lora_B["default"].weight)
        ours.magnitude.copy_(lin.lora_magnitude_vector["default"].weight)
    parametrize.register_parametrization(net[0], "weight", ours)
    net[0].parametrizations.weight.original.requires_grad_(False)
    x = torch.randn(5, 12)
    expected, got = theirs(x), net(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    expected.square().sum().backward()
    got.square().sum().backward()
    pairs = [(ours.lora_A.weight, lin.lora_A["default"].weight),
             (ours.lora_B.weight, lin.lora_B["default"].weight),
             (ours.magnitude, lin.lora_magnitude_vector["default"].weight)]  # fmt: skip
    for mine, peft_param in pairs:
        torch.testing.assert_close(mine.grad, peft_param.grad, rtol=1e-4, atol=1e-5)


def test_dora_starts_at_the_frozen_weight_and_merges():
    frozen = model_for("mamba2")
    config = MambaLoRAConfig(target_modules=["in_proj_x", "in_proj_B", "out_proj"], use_dora=True)
    model = inject_adapters(copy.deepcopy(frozen), config)
    mixer, plain = model.backbone.layers[0].mixer, frozen.backbone.layers[0].mixer
    assert torch.equal(effective(mixer.in_proj), plain.in_proj.weight)
    randomise(model)
    adapted = effective(mixer.in_proj)
    merged = merge_and_unload(model)
    torch.testing.assert_close(merged.backbone.layers[0].mixer.in_proj.weight, adapted)


R8 = 8
MAMBA_130M_PARTS = {  # (rows, cols) of each part: D_m 768, D 1536, N 16, R 48, k 4
    "in_proj_x": (1536, 768), "in_proj_z": (1536, 768), "x_proj_dt": (48, 1536),
    "x_proj_B": (16, 1536), "x_proj_C": (16, 1536), "dt_proj": (1536, 48),
    "out_proj": (768, 1536), "conv1d": (1536, 4),
}  # fmt: skip


@pytest.mark.parametrize("part", sorted(MAMBA_130M_PARTS))
@pytest.mark.parametrize("dora", [False, True])
def test_counts_on_mamba_130m_shapes_are_r_times_rows_plus_cols(part, dora):
    model = inject_adapters(mamba_130m(), MambaLoRAConfig(target_modules=[part], use_dora=dora))
    rows, cols = MAMBA_130M_PARTS[part]
    expected = 24 * (R8 * (rows + cols) + (rows if dora else 0))
    assert count_trainable_parameters(model, include_head=False) == expected


def test_the_issues_mamba_130m_numbers():
    out = inject_adapters(mamba_130m(), MambaLoRAConfig(target_modules=["out_proj"]))
    assert count_trainable_parameters(out, include_head=False) == 442_368
    bitfit = inject_adapters(mamba_130m(), BitFitConfig())  # conv1d and dt_proj biases
    assert count_trainable_parameters(bitfit, include_head=False) == 73_728
    embeddings = inject_adapters(mamba_130m(), MambaLoRAConfig(target_modules=["embeddings"]))
    assert count_trainable_parameters(embeddings, include_head=False) == 8 * (50280 + 768)


@pytest.mark.parametrize(
    ("trainable", "expected"),
    [
        (["A_log"], 24 * 1536 * 16),
        (["x_proj"], 24 * 80 * 1536),
        (["x_proj_dt", "x_proj_B", "x_proj_C"], 24 * 80 * 1536),  # the reference's x_proj rows
        (["dt_proj"], 24 * (48 * 1536 + 1536)),
        (["conv1d"], 24 * (1536 * 4 + 1536)),
        (["D", "norm", "norm_f"], 24 * (1536 + 768) + 768),
        (["in_proj_z"], 24 * 1536 * 768),
    ],
)
def test_layer_freeze_counts_on_mamba_130m_shapes(trainable, expected):
    model = inject_adapters(mamba_130m(), LayerFreezeConfig(trainable=trainable))
    assert count_trainable_parameters(model, include_head=False) == expected


def test_layer_freeze_trains_exactly_what_it_names():
    frozen = model_for("mamba")
    config = LayerFreezeConfig(trainable=["x_proj_B", "A_log", "norm", "norm_f"])
    model = inject_adapters(copy.deepcopy(frozen), config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {"score.weight", "backbone.norm_f.weight"}
    for i in range(2):
        expected |= {f"backbone.layers.{i}.mixer.A_log", f"backbone.layers.{i}.norm.weight",
                     f"backbone.layers.{i}.mixer.x_proj.parametrizations.weight.0.delta"}  # fmt: skip
    assert trainable == expected
    randomise(model)
    mixer, plain = model.backbone.layers[0].mixer, frozen.backbone.layers[0].mixer
    r, n = mixer.time_step_rank, mixer.ssm_state_size
    changed = (effective(mixer.x_proj) != plain.x_proj.weight).any(1)
    assert changed.nonzero().squeeze(1).tolist() == list(range(r, r + n))  # the B rows only


@pytest.mark.parametrize(
    ("kind", "config", "message"),
    [
        ("mamba", MambaLoRAConfig(target_modules=["x_proj_Q"]), "has no part"),
        ("mamba2", MambaLoRAConfig(target_modules=["x_proj_B"]), "its parts: .*in_proj_B"),
        ("mamba", MambaLoRAConfig(target_modules=["in_proj", "in_proj_x"]), "overlap"),
        ("mamba", MambaLoRAConfig(target_modules=["embeddings"], use_dora=True), "DoRA is not"),
        ("mamba", MambaLoRAConfig(target_modules="out_proj"), "must be a list"),
        ("roberta", MambaLoRAConfig(), "adapts Mamba mixers"),
        ("mamba", LayerFreezeConfig(trainable=["B"]), "unknown trainable"),
        ("mamba", LayerFreezeConfig(trainable=["mixer_norm"]), "has no mixer_norm"),
        ("mamba", LayerFreezeConfig(trainable=["dt_bias"]), "has no dt_bias"),
        ("mamba", LayerFreezeConfig(trainable=[]), "at least one"),
    ],
)
def test_bad_targets_are_refused_at_injection(kind, config, message):
    with pytest.raises(SsmloraError, match=message):
        inject_adapters(model_for(kind), config)
