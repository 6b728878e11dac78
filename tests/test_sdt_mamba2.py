"""SDT / SDLoRA on Mamba-2 (arXiv 2410.09016): heads instead of channels (A_log, dt_bias, D) and the B/C
rows of ``in_proj`` for the best groups; selection, frozen backbone, save/load, one-command fit."""

from operator import attrgetter

import pytest
import torch
from safetensors.torch import load_file

from ssmlora_app.adapters import (
    SDTConfig,
    adapter_state_dict,
    count_trainable_parameters,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
    unmerge_adapters,
)
from ssmlora_app.adapters.sdt_phases import SELECTED, sdt_phase, start_warmup
from ssmlora_app.adapters.sdt_select import select_dimensions
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.cli import main
from tests.conftest import REPO
from tests.test_sdt import batch, logits, randomise_adapter

TINY_MAMBA2 = {
    "model_type": "mamba2",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "state_size": 8,
    "expand": 2,  # 32 channels = 8 heads of 4
    "num_heads": 8,
    "head_dim": 4,
    "n_groups": 2,  # heads 0-3 read group 0's B/C, heads 4-7 group 1's
    "chunk_size": 8,
    "vocab_size": 50,
    "pad_token_id": 0,
}
SMALL = {
    "channel_freeze": 0.75
}  # k_h = 8 − round(6) = 2 heads, k_g = max(1, 2 − round(1.5)) = 1 group
HEAD_TENSORS = ("A_log", "dt_bias", "D")


def tiny_mamba2(seed: int = 0):
    backbone = BackboneConfig(config=TINY_MAMBA2, init_seed=seed)
    return build_classifier(backbone, 2, "single_label_classification").eval()


def mixer(model, i: int = 0):
    return model.backbone.layers[i].mixer


def heads_delta(model, tensor: str = "A_log", i: int = 0):
    return getattr(mixer(model, i).parametrizations, tensor)[0]


def bc_delta(model, i: int = 0):
    return mixer(model, i).in_proj.parametrizations.weight[0]


def lora(model, i: int = 0):
    return mixer(model, i).out_proj.parametrizations.weight[0]


def selected_model(seed: int = 0, **config):
    """A tiny injected Mamba-2 after a (fake) warm-up with random ΔA_log, then selection."""
    model = inject_adapters(tiny_mamba2(), SDTConfig(**{**SMALL, **config}))
    start_warmup(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(2):
            dense = heads_delta(model, "A_log", i).dense
            dense.copy_(torch.randn(dense.shape, generator=g))
    select_dimensions(model)
    return model


def bc_rows(model, i: int = 0) -> set[int]:
    """The in_proj rows of the selected groups' B and C."""
    m, groups = mixer(model, i), bc_delta(model, i).groups.tolist()
    n, base = m.ssm_state_size, 2 * m.intermediate_size
    b = {base + g * n + s for g in groups for s in range(n)}
    return b | {r + m.n_groups * n for r in b}


def test_zero_deltas_equal_the_untouched_model_and_the_forward_uses_the_deltas():
    reference = logits(tiny_mamba2())
    model = inject_adapters(tiny_mamba2(), SDTConfig(**SMALL))
    assert torch.equal(logits(model), reference)
    start_warmup(model)
    assert torch.equal(logits(model), reference)
    model = selected_model()
    assert torch.equal(logits(model), reference)  # selection restored the pretrained weights
    randomise_adapter(model)
    adapted = logits(model)
    # An untouched twin given the effective weights gives the same logits: no bypassed wrapper.
    plain = tiny_mamba2()
    with torch.no_grad():
        for i in range(2):
            for tensor in (*HEAD_TENSORS, "in_proj.weight", "out_proj.weight"):
                attrgetter(tensor)(mixer(plain, i)).copy_(attrgetter(tensor)(mixer(model, i)))
        plain.score.weight.copy_(model.score.weight)
    assert not torch.allclose(adapted, reference, atol=1e-4)
    torch.testing.assert_close(adapted, logits(plain), atol=1e-6, rtol=1e-5)
    merge_adapters(model)
    torch.testing.assert_close(logits(model), adapted, atol=1e-6, rtol=1e-5)
    unmerge_adapters(model)
    torch.testing.assert_close(logits(model), adapted, atol=1e-6, rtol=1e-5)
    # each delta on its own reaches the output
    for tensor in (*HEAD_TENSORS, "in_proj"):
        model = selected_model()
        module = bc_delta(model) if tensor == "in_proj" else heads_delta(model, tensor)
        before = logits(model)
        with torch.no_grad():
            (module.theta_B if tensor == "in_proj" else module.theta).add_(0.5)
        assert not torch.equal(logits(model), before), tensor


def test_trainable_count_is_fixed_by_the_ratios_before_the_warmup():
    model = inject_adapters(tiny_mamba2(), SDTConfig(r=8, **SMALL))
    m = mixer(model)
    k_h, k_g = 2, 1
    per_layer = (
        3 * k_h  # θ of A_log, dt_bias, D
        + 2 * k_g * m.ssm_state_size * m.hidden_size  # θ_B, θ_C
        + 8 * (m.intermediate_size + m.hidden_size)  # LoRA on out_proj
    )
    assert count_trainable_parameters(model, include_head=False) == 2 * per_layer
    assert bc_delta(model).theta_B.shape == (k_g, m.ssm_state_size, m.hidden_size)


def test_selection_takes_the_heads_with_the_largest_squared_change_and_the_best_group():
    model = inject_adapters(tiny_mamba2(), SDTConfig(**SMALL))
    start_warmup(model)
    with torch.no_grad():
        # head 3: 4.0, the largest; heads 4-7: 1.44 each, ties go to the lower index (4);
        # group 0 (heads 0-3) sums to 4.0 < group 1 (heads 4-7) 5.76, sign does not matter.
        heads_delta(model).dense.copy_(torch.tensor([0.0, 0.0, 0.0, -2.0, 1.2, -1.2, 1.2, 1.2]))
    selection = select_dimensions(model)["backbone.layers.0.mixer"]
    assert selection.channels.tolist() == [3, 4]
    assert selection.groups.tolist() == [1]
    for tensor in HEAD_TENSORS:
        assert heads_delta(model, tensor).heads.tolist() == [3, 4]
    assert bc_delta(model).groups.tolist() == [1]
    assert sdt_phase(model) == SELECTED
    assert heads_delta(model).dense.numel() == 0
    assert heads_delta(model).theta.requires_grad


def test_after_selection_only_masked_entries_train_and_the_backbone_stays_bit_identical():
    model = selected_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    names = (*HEAD_TENSORS, "in_proj.weight")
    before = {
        (i, t): attrgetter(t)(mixer(model, i)).detach().clone() for i in range(2) for t in names
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for _ in range(3):
        loss = model(**batch(3), labels=torch.tensor([0, 1, 1])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    for i in range(2):
        heads = set(heads_delta(model, "A_log", i).heads.tolist())
        for tensor in HEAD_TENSORS:
            changed = (getattr(mixer(model, i), tensor) != before[i, tensor]).nonzero()
            assert changed.numel() and set(changed[:, 0].tolist()) <= heads, (i, tensor)
        changed = (mixer(model, i).in_proj.weight != before[i, "in_proj.weight"]).nonzero()
        assert changed.numel() and set(changed[:, 0].tolist()) <= bc_rows(model, i)
    assert lora(model).lora_B.weight.abs().sum() > 0


def test_save_reload_keeps_masks_and_logits(tmp_path):
    model = selected_model(seed=5)
    randomise_adapter(model)
    expected = logits(model)
    save_adapter(model, tmp_path / "sdt")
    reloaded = load_adapter(tiny_mamba2(), tmp_path / "sdt")
    assert sdt_phase(reloaded) == SELECTED
    for tensor in HEAD_TENSORS:
        assert torch.equal(heads_delta(reloaded, tensor).heads, heads_delta(model, tensor).heads)
    assert torch.equal(bc_delta(reloaded).groups, bc_delta(model).groups)
    assert torch.equal(logits(reloaded), expected)
    # A fresh model in its warm-up (as a resumed fit builds it) takes a post-selection state.
    fresh = inject_adapters(tiny_mamba2(), SDTConfig(**SMALL))
    start_warmup(fresh)
    fresh.load_state_dict(adapter_state_dict(model), strict=False)
    assert sdt_phase(fresh) == SELECTED and heads_delta(fresh).dense.numel() == 0
    assert heads_delta(fresh).theta.requires_grad and bc_delta(fresh).theta_C.requires_grad
    assert torch.equal(logits(fresh), expected)
    assert count_trainable_parameters(fresh) == count_trainable_parameters(model)


def test_num_zero_prunes_the_lowest_scoring_heads_columns_of_out_proj():
    model = selected_model(num_zero=1)
    m, pruned = mixer(model), lora(model).pruned
    assert pruned.numel() == m.head_dim  # one head's channels
    head = pruned[0].item() // m.head_dim
    assert pruned.tolist() == list(range(head * m.head_dim, (head + 1) * m.head_dim))
    assert head not in heads_delta(model).heads.tolist()
    assert (m.out_proj.weight[:, pruned] == 0).all()


@pytest.mark.slow
def test_one_fit_on_mamba2_warms_up_selects_and_trains(tmp_path, caplog):
    caplog.set_level("INFO")
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart_sdt_mamba2.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.logger.init_args.version=v",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.max_epochs=2",
            "--model.adapter.init_args.warmup_steps=4",
            "--data.max_train_samples=48",
            "--data.max_eval_samples=32",
            "--data.batch_size=16",
            "--data.max_length=16",
        ]
    )
    assert "SDT: dimensions selected after 4 warm-up steps" in caplog.text
    assert "heads [" in caplog.text
    adapter = load_file(
        tmp_path / "quickstart_sdt_mamba2" / "v" / "adapter" / "adapter_model.safetensors"
    )
    phases = [v for k, v in adapter.items() if k.endswith(".phase")]
    assert phases and all(int(p) == SELECTED for p in phases)
    for suffix in (
        "A_log.0.theta",
        "dt_bias.0.theta",
        "D.0.theta",
        "in_proj.parametrizations.weight.0.theta_B",
    ):
        theta = [v for k, v in adapter.items() if k.endswith(suffix)]
        assert theta and all(t.abs().sum() > 0 for t in theta), suffix  # trained after selection
