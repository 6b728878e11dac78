"""SDT / SDLoRA on Mamba (arXiv 2410.09016): re-parametrised LoRA and sparse SSM deltas, the selection,
counts, save/load and the one-command fit with warm-up, selection and resume."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, MambaConfig

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
from ssmlora_app.adapters.sdt_phases import SELECTED, WARMUP, kept, sdt_phase, start_warmup
from ssmlora_app.adapters.sdt_select import select_dimensions
from ssmlora_app.backbone import BackboneConfig, SSMForSequenceClassification, build_classifier
from ssmlora_app.cli import main
from ssmlora_app.errors import SsmloraError
from tests.conftest import REPO
from tests.test_cli import StopAfterFirstEpoch  # noqa: F401  (named on the command line)

TINY_MAMBA = {
    "model_type": "mamba",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "state_size": 8,
    "expand": 2,  # D = 32 channels
    "vocab_size": 50,
    "pad_token_id": 0,
}
SMALL = {"channel_freeze": 0.9, "state_freeze": 0.5}  # k_c = 32 − round(28.8) = 3, k_s = 8 − 4 = 4


def tiny_mamba(seed: int = 0):
    backbone = BackboneConfig(config=TINY_MAMBA, init_seed=seed)
    return build_classifier(backbone, 2, "single_label_classification").eval()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def logits(model, inputs=None):
    with torch.no_grad():
        return model(**(inputs or batch())).logits


def mixer(model, i: int = 0):
    return model.backbone.layers[i].mixer


def a_log_delta(model, i: int = 0):
    return mixer(model, i).parametrizations.A_log[0]


def bc_delta(model, i: int = 0):
    return mixer(model, i).x_proj.parametrizations.weight[0]


def lora(model, i: int = 0):
    return mixer(model, i).out_proj.parametrizations.weight[0]


def selected_model(seed: int = 0, **config):
    """A tiny injected model after a (fake) warm-up with random ΔA_log, then selection."""
    model = inject_adapters(tiny_mamba(), SDTConfig(**{**SMALL, **config}))
    start_warmup(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(2):
            dense = a_log_delta(model, i).dense
            dense.copy_(torch.randn(dense.shape, generator=g))
    select_dimensions(model)
    return model


def randomise_adapter(model, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith("score."):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_zero_deltas_equal_the_untouched_model_and_merge_equals_unmerged():
    reference = logits(tiny_mamba())
    model = inject_adapters(tiny_mamba(), SDTConfig(**SMALL))
    assert torch.equal(logits(model), reference)
    start_warmup(model)  # a zero dense ΔA_log changes nothing either
    assert torch.equal(logits(model), reference)
    model = selected_model()
    assert torch.equal(logits(model), reference)  # selection restored the pretrained weights
    randomise_adapter(model)
    unmerged = logits(model)
    assert not torch.allclose(unmerged, reference, atol=1e-4)
    merge_adapters(model)
    assert lora(model).merged
    torch.testing.assert_close(logits(model), unmerged, atol=1e-6, rtol=1e-5)
    unmerge_adapters(model)
    torch.testing.assert_close(logits(model), unmerged, atol=1e-6, rtol=1e-5)


def test_trainable_count_of_mamba_130m_shapes_is_455328():
    config = MambaConfig(
        hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, vocab_size=50280
    )
    config.num_labels = 2
    with torch.device("meta"):
        model = SSMForSequenceClassification(AutoModel.from_config(config))
    inject_adapters(model, SDTConfig(r=8, channel_freeze=0.99, state_freeze=0.75))
    # The training-phase budget (θ_A + θ_B + θ_C + LoRA), reported right after injection.
    assert count_trainable_parameters(model, include_head=False) == 455_328
    assert count_trainable_parameters(model) == 455_328 + 768 * 2
    assert a_log_delta(model).theta.shape == (15, 4)
    assert bc_delta(model).theta_B.shape == (16, 15)
    # The parameter-matched LoRA baseline (configs/mamba-130m_<task>_lora.yaml): r=8 on out_proj.
    with torch.device("meta"):
        model = SSMForSequenceClassification(AutoModel.from_config(config))
    inject_adapters(model, SDTConfig(r=8, sparse_targets=[]))
    assert count_trainable_parameters(model, include_head=False) == 442_368


@pytest.mark.parametrize(
    ("total", "freeze", "expected"),
    [
        (16, 0.75, 4),  # Mamba-130M states at the paper's default
        (16, 0.9, 2),  # floor((1 - 0.9)·16) would keep 1
        (16, 0.95, 1),
        (1536, 0.99, 15),  # Mamba-130M channels
        (3072, 0.99, 31),  # Mamba-790M: floor would keep 30
        (4096, 0.99, 41),  # Mamba-1.4B: floor would keep 40
        (64, 0.99, 1),
        (2, 0.75, 1),  # 2 − round(1.5) = 0 (halves to even, as Python's round): at least 1
    ],
)
def test_kept_dimensions_follow_the_reference_count(total, freeze, expected):
    """The SDLoRA reference keeps ``n − round(freeze·n)`` dimensions."""
    assert kept(total, freeze) == expected


def test_the_papers_state_freeze_budgets_on_mamba_130m_shapes():
    """state_freeze 0.75 / 0.9 / 0.95 (channel_freeze 0.99): 4 / 2 / 1 states in 15 channels."""
    config = MambaConfig(
        hidden_size=768, num_hidden_layers=24, state_size=16, expand=2, vocab_size=50280
    )
    config.num_labels = 2
    for state_freeze, states in ((0.75, 4), (0.9, 2), (0.95, 1)):
        with torch.device("meta"):
            model = SSMForSequenceClassification(AutoModel.from_config(config))
        inject_adapters(model, SDTConfig(channel_freeze=0.99, state_freeze=state_freeze))
        assert a_log_delta(model).theta.shape == (15, states)
        per_layer = 15 * states + 2 * 16 * 15 + 8 * (1536 + 768)
        assert count_trainable_parameters(model, include_head=False) == 24 * per_layer


def test_selection_takes_the_largest_squared_change_with_ties_to_the_lower_index():
    model = inject_adapters(tiny_mamba(), SDTConfig(**SMALL))
    start_warmup(model)
    assert sdt_phase(model) == WARMUP
    with torch.no_grad():
        dense = a_log_delta(model).dense  # (32 channels, 8 states)
        dense[20] = 0.1
        dense[20, [1, 3, 5, 6]] = -2.0  # channel 20: the largest Σ ΔA², sign does not matter
        dense[7, 2] = 1.5  # 2.25
        dense[11, 0] = 1.5  # 2.25, a tie with channel 7
        dense[25, 4] = 1.5  # 2.25, a tie too: the higher index loses
        dense[3, :] = 0.5  # 8 · 0.25 = 2.0 < 2.25
    selection = select_dimensions(model)["backbone.layers.0.mixer"]
    assert selection.channels.tolist() == [7, 11, 20]
    states = dict(zip(selection.channels.tolist(), selection.states.tolist()))
    assert states[20] == [1, 3, 5, 6]
    assert states[7] == [0, 1, 2, 3]  # state 2, then ties to the lowest indices
    assert states[11] == [0, 1, 2, 3]
    assert a_log_delta(model).channels.tolist() == [7, 11, 20]
    assert bc_delta(model).channels.tolist() == [7, 11, 20]
    assert sdt_phase(model) == SELECTED
    assert a_log_delta(model).dense.numel() == 0


def test_after_selection_only_masked_entries_train_and_the_backbone_stays_bit_identical():
    model = selected_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {
        i: (mixer(model, i).A_log.detach(), mixer(model, i).x_proj.weight.detach())
        for i in range(2)
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    inputs = batch(3)
    for _ in range(3):
        loss = model(**inputs, labels=torch.tensor([0, 1, 1])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    for i in range(2):
        a_old, x_old = before[i]
        a_changed = (mixer(model, i).A_log != a_old).nonzero().tolist()
        channels = a_log_delta(model, i).channels
        expected = {
            (c, s)
            for c, row in zip(channels.tolist(), a_log_delta(model, i).states.tolist())
            for s in row
        }
        assert a_changed and {tuple(e) for e in a_changed} <= expected
        x_changed = (mixer(model, i).x_proj.weight != x_old).nonzero()
        rank = mixer(model, i).time_step_rank
        assert x_changed.numel()
        assert (x_changed[:, 0] >= rank).all()  # never the δ rows
        assert set(x_changed[:, 1].tolist()) <= set(channels.tolist())
    assert lora(model).lora_B.weight.abs().sum() > 0


def test_the_forward_uses_the_parametrised_weights():
    model = selected_model()
    randomise_adapter(model)
    plain = tiny_mamba()  # untouched twin; its weights are set to the adapted effective ones
    with torch.no_grad():
        for i in range(2):
            mixer(plain, i).A_log.copy_(mixer(model, i).A_log)
            mixer(plain, i).x_proj.weight.copy_(mixer(model, i).x_proj.weight)
            mixer(plain, i).out_proj.weight.copy_(mixer(model, i).out_proj.weight)
        plain.score.weight.copy_(model.score.weight)
    adapted = logits(model)
    assert not torch.allclose(adapted, logits(tiny_mamba()), atol=1e-4)
    torch.testing.assert_close(adapted, logits(plain), atol=1e-6, rtol=1e-5)
    # and each delta on its own reaches the output
    for delta in ("theta", "theta_B", "lora_B"):
        model = selected_model()
        module = {"theta": a_log_delta, "theta_B": bc_delta, "lora_B": lora}[delta](model)
        reference = logits(model)
        with torch.no_grad():
            tensor = getattr(module, delta)
            (tensor.weight if delta == "lora_B" else tensor).add_(2.0)
        assert not torch.equal(logits(model), reference), delta  # a bypass gives equality


def test_save_reload_and_state_dict_resume_keep_masks_and_logits(tmp_path):
    model = selected_model(seed=5)
    randomise_adapter(model)
    expected = logits(model)
    save_adapter(model, tmp_path / "sdt")
    reloaded = load_adapter(tiny_mamba(), tmp_path / "sdt")
    assert sdt_phase(reloaded) == SELECTED
    assert torch.equal(a_log_delta(reloaded).states, a_log_delta(model).states)
    assert torch.equal(logits(reloaded), expected)
    # A fresh model in its warm-up (as a resumed fit builds it) takes a post-selection state.
    fresh = inject_adapters(tiny_mamba(), SDTConfig(**SMALL))
    start_warmup(fresh)
    fresh.load_state_dict(adapter_state_dict(model), strict=False)
    assert sdt_phase(fresh) == SELECTED and a_log_delta(fresh).dense.numel() == 0
    assert a_log_delta(fresh).theta.requires_grad
    assert torch.equal(logits(fresh), expected)
    assert count_trainable_parameters(fresh) == count_trainable_parameters(model)


def test_num_zero_prunes_the_lowest_scoring_channels_from_out_proj():
    model = selected_model(num_zero=2)
    pruned = lora(model).pruned
    assert pruned.numel() == 2
    assert not set(pruned.tolist()) & set(a_log_delta(model).channels.tolist())
    assert (mixer(model).out_proj.weight[:, pruned] == 0).all()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dropout": 0.1}, "no input to drop"),
        ({"sparse_targets": ["D"]}, "sparse_targets"),
        ({"warmup_steps": 0}, "at least 1 step"),
        ({"channel_freeze": 1.0}, "channel_freeze"),
    ],
)
def test_bad_config_is_refused_at_injection(fields, message):
    with pytest.raises(SsmloraError, match=message):
        inject_adapters(tiny_mamba(), SDTConfig(**fields))


def test_sparse_deltas_need_a_mamba_backbone():
    from tests.helpers import tiny_classifier

    with pytest.raises(SsmloraError, match="need Mamba mixers"):
        inject_adapters(tiny_classifier(), SDTConfig(target_modules=["query"]))


def fit(tmp_path, *extra: str, version: str):
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "quickstart_sdt.yaml"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.logger.init_args.version={version}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--trainer.max_epochs=2",
            "--model.adapter.init_args.warmup_steps=4",
            "--data.max_train_samples=48",
            "--data.max_eval_samples=32",
            "--data.batch_size=16",
            "--data.max_length=16",
            *extra,
        ]
    )
    return tmp_path / "quickstart_sdt" / version


@pytest.mark.slow
def test_one_fit_warms_up_selects_trains_and_resumes_across_the_warmup(tmp_path, caplog):
    caplog.set_level("INFO")
    straight = fit(tmp_path, version="straight")  # 3 steps per epoch, selection after step 4
    assert "SDT: dimensions selected after 4 warm-up steps" in caplog.text
    adapter = load_file(straight / "adapter" / "adapter_model.safetensors")
    phases = [v for k, v in adapter.items() if k.endswith(".phase")]
    assert phases and all(int(p) == SELECTED for p in phases)
    theta = [v for k, v in adapter.items() if k.endswith("A_log.0.theta")]
    assert theta and all(t.abs().sum() > 0 for t in theta)  # trained after the selection
    # Interrupted during the warm-up (after epoch 0 = step 3), then resumed.
    stop = "--trainer.callbacks+=tests.test_sdt.StopAfterFirstEpoch"
    first = fit(tmp_path, stop, version="resumed")
    checkpoint = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.endswith(".dense") and v.numel() for k, v in checkpoint["state_dict"].items())
    resumed = fit(tmp_path, f"--ckpt_path={first / 'checkpoints' / 'last.ckpt'}", version="resumed")
    again = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert adapter.keys() == again.keys()
    for key in adapter:
        assert torch.equal(adapter[key], again[key]), key
