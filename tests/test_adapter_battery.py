"""One battery over every registered adapter method (as peft's common tester), including a
throwaway (IA)³ registered from one file outside the package (tests/throwaway_ia3.py).

Each method is tried on a tiny RoBERTa and a tiny Mamba classifier with the configurations of its
``bench`` hook; where it applies: zero effect at init (where the method promises it), gradients on
every trainable parameter and on nothing else (DDP's ``find_unused_parameters=False``), save ->
load gives equal logits, what trains is what is saved (and no backbone weight), merge equals the
adapter model or is refused clearly. The slow part runs ``ssmlora fit`` (checkpoint without the
backbone), ``export``, a ``sweep`` command and ``bench`` on each.
"""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import tests.throwaway_ia3  # noqa: F401  (registers the "ia3" adapter)
from ssmlora_app.adapters import (
    ADAPTERS,
    AdapterLayer,
    BenchSettings,
    adapter_state_dict,
    count_trainable_parameters,
    get_method,
    inject_adapters,
    load_adapter,
    merge_and_unload,
    save_adapter,
)
from ssmlora_app.adapters.inject import TRAINED_ATTR, default_head
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.cli import main
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tools.bench import BenchPreset, run_bench
from ssmlora_app.tools.sweep import sweep_commands
from tests.conftest import REPO, TINY_ROBERTA

TINY_MAMBA = {"model_type": "mamba", "hidden_size": 16, "num_hidden_layers": 2, "state_size": 8,
              "expand": 2, "vocab_size": 120, "pad_token_id": 1}  # fmt: skip
TINY_MAMBA2 = {"model_type": "mamba2", "hidden_size": 16, "num_hidden_layers": 2, "state_size": 8,
               "expand": 2, "num_heads": 8, "head_dim": 4, "n_groups": 2, "chunk_size": 8,
               "vocab_size": 120, "pad_token_id": 1}  # fmt: skip
BACKBONES = {
    "roberta": (TINY_ROBERTA, ("query", "value"), "quickstart_random.yaml"),
    "mamba": (TINY_MAMBA, ("in_proj", "out_proj"), "quickstart_sdt.yaml"),
    "mamba2": (TINY_MAMBA2, ("in_proj", "out_proj"), "quickstart_sdt_mamba2.yaml"),
}
"""Backbone -> (config dict, LoRA-like targets, a quickstart config for that architecture)."""

MAMBAS = {"mamba", "mamba2"}
APPLIES = {
    "lora": {"roberta", *MAMBAS},
    "ssmlora": {"roberta"},
    "hrm": {"roberta"},
    "sdt": MAMBAS,
    "ia3": {"roberta"},
    "init_state": MAMBAS,
    "state_offset": MAMBAS,
    "additional_scan": MAMBAS,
    "ssm_prefix": MAMBAS,
    "layer_freeze": MAMBAS,
    "mamba_lora": MAMBAS,
    "peft": {"roberta"},  # peft's methods on transformers models, not the Mamba classifier
    "qlora": set(),  # 4-bit weights need a GPU (tests/test_qlora.py runs it where there is one)
}
"""Where the known methods must apply; a method added later must apply to one backbone at least."""

METHODS = sorted(ADAPTERS)


def model_for(backbone: str, seed: int = 0):
    fields, _, _ = BACKBONES[backbone]
    return build_classifier(
        BackboneConfig(config=dict(fields), init_seed=seed), 2, "single_label_classification"
    ).eval()


def cases(name: str) -> list[tuple[str, str, object]]:
    """``(backbone, row, config)`` for each configuration of the method's bench hook that injects
    into that backbone."""
    method = get_method(name)
    found = []
    for backbone, (_, targets, _) in BACKBONES.items():
        try:
            configs = method.bench_configs(model_for(backbone), BenchSettings(targets))
            for row, config in configs.items():
                inject_adapters(model_for(backbone), copy.deepcopy(config))
                found.append((backbone, row, config))
        except SsmloraError:
            continue
    return found


def batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch()).logits


def randomise(model) -> None:
    """Move every trainable tensor away from its init, so the checks below can fail."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("name", METHODS)
def test_method_applies_where_expected(name):
    applies = {backbone for backbone, _, _ in cases(name)}
    assert applies == APPLIES[name] if name in APPLIES else applies, applies


@pytest.mark.parametrize("name", METHODS)
def test_zero_effect_at_init_where_promised(name):
    method = get_method(name)
    for backbone, row, config in cases(name):
        frozen = model_for(backbone)
        adapted = inject_adapters(copy.deepcopy(frozen), copy.deepcopy(config))
        difference = (logits(adapted) - logits(frozen)).abs().max()
        if method.is_identity_at_init(config):
            assert difference == 0, (row, difference)
        else:  # the promise is not made: the adapter acts from the start (HRM's gate 0.01)
            assert difference > 0, row


@pytest.mark.parametrize("name", METHODS)
def test_gradients_reach_every_trainable_parameter_and_nothing_else(name):
    """DDP with ``find_unused_parameters=False`` fails on a trainable parameter without a
    gradient; a frozen parameter with one would be trained by nobody."""
    for backbone, row, config in cases(name):
        model = inject_adapters(model_for(backbone), copy.deepcopy(config)).train()
        randomise(model)
        model(**batch(), labels=torch.tensor([0, 1, 1])).loss.backward()
        for param_name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None, f"{row}: no gradient for {param_name}"
            else:
                assert p.grad is None, f"{row}: frozen {param_name} got a gradient"


@pytest.mark.parametrize("name", METHODS)
def test_save_load_round_trip_and_what_is_saved(name, tmp_path):
    for backbone, row, config in cases(name):
        frozen = model_for(backbone)
        backbone_weights = {n for n, p in frozen.named_parameters()}
        model = inject_adapters(copy.deepcopy(frozen), copy.deepcopy(config))
        randomise(model)
        folder = save_adapter(model, tmp_path / row)
        saved = {k.removeprefix("base_model.model."): v for k, v in
                 load_file(folder / "adapter_model.safetensors").items()}  # fmt: skip
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert sum(p.numel() for p in trainable.values()) == count_trainable_parameters(model)
        assert set(trainable) <= set(adapter_state_dict(model)), row
        if get_method(name).state is not None:  # a wrapper's own folder layout (peft's)
            _check_own_layout(model, saved, backbone_weights, row)
            loaded = load_adapter(model_for(backbone), folder)
            torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
            continue
        assert set(trainable) <= set(saved), row
        # The head is saved whole: the trained modules_to_save, and the model's freshly
        # initialised head even where an adapter wraps its linears (its frozen base weights are
        # a random draw no checkpoint holds); no pretrained backbone weight is saved.
        fresh = [*model.ssmlora_config.modules_to_save, *default_head(model)]
        heads = tuple(f"{h}." for h in fresh)
        trained = set(getattr(model, TRAINED_ATTR, ()))  # the backbone parameters it trains
        leaked = {
            k
            for k in saved
            if k in backbone_weights and not k.startswith(heads) and k not in trained
        }
        assert not leaked, f"{row}: backbone weights saved: {sorted(leaked)[:3]}"
        bases = [k for k in saved if k.endswith((".original", "base_layer.weight"))]
        assert all(k.startswith(heads) for k in bases), (row, bases)
        assert set(saved) == set(adapter_state_dict(model)), row
        loaded = load_adapter(model_for(backbone), folder)
        torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)
        assert (logits(loaded) - logits(frozen)).abs().max() > 1e-4, f"{row}: adapter inert"


@pytest.mark.parametrize("name", METHODS)
def test_merge_equals_the_adapter_model_or_is_refused(name):
    method = get_method(name)
    for backbone, row, config in cases(name):
        model = inject_adapters(model_for(backbone), copy.deepcopy(config))
        randomise(model)
        expected = logits(model)
        if not method.can_merge(config):
            with pytest.raises(SsmloraError, match="cannot be merged"):
                merge_and_unload(model)
            continue
        merged = merge_and_unload(model)
        assert not any(isinstance(m, AdapterLayer) for m in merged.modules()), row
        assert not any("parametrizations" in n for n, _ in merged.named_parameters()), row
        plain = model_for(backbone)
        assert {n for n, _ in merged.named_parameters()} == {n for n, _ in plain.named_parameters()}
        torch.testing.assert_close(logits(merged), expected, rtol=1e-4, atol=1e-5)


def _check_own_layout(model, saved: dict, backbone_weights: set, row: str) -> None:
    """A wrapper's folder (peft's layout): no backbone weight, not the head's frozen original, and
    no more than the adapter's own tensors."""
    bases = [k for k in saved if "base_layer" in k or "original_module" in k]
    heads = tuple(f"{h}." for h in model.ssmlora_config.modules_to_save)
    leaked = {k for k in set(saved) & backbone_weights if not k.startswith(heads)}
    assert not bases and not leaked, (row, bases, sorted(leaked)[:3])
    own = sum(t.numel() for t in adapter_state_dict(model).values())
    assert sum(t.numel() for t in saved.values()) <= own, row


# The app's commands on each method: slow (each fit builds a run folder).
def _adapter_arg(name: str, config) -> str:
    import dataclasses

    init_args = {k: v for k, v in dataclasses.asdict(config).items() if k != "modules_to_save"}
    init_args["modules_to_save"] = config.modules_to_save
    return "--model.adapter=" + json.dumps(
        {"class_path": get_method(name).class_path, "init_args": init_args}
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_fit_export_sweep_and_bench_accept_the_method(name, tmp_path, capsys):
    method = get_method(name)
    if not cases(name):
        pytest.skip(f"{name} applies to none of the battery's CPU backbones")
    backbone, _, config = cases(name)[0]
    fields, targets, quickstart = BACKBONES[backbone]
    common = [
        "--config", str(REPO / "configs" / quickstart),
        f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=b",
        "--trainer.logger.init_args.version=v", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.max_steps=3",
        "--data.max_train_samples=48", "--data.max_eval_samples=16", "--data.batch_size=16",
        _adapter_arg(name, config),
    ]  # fmt: skip
    main(["fit", *common])
    run = tmp_path / "b" / "v"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    keys = {k.removeprefix("model.") for k in checkpoint["state_dict"]}
    model = inject_adapters(model_for(backbone), copy.deepcopy(config))
    assert keys == set(adapter_state_dict(model)), "the checkpoint holds more than the adapter"

    main(["export", f"--run={run}", f"--out={tmp_path / 'export'}"])
    assert (tmp_path / "export" / "adapter" / "adapter_model.safetensors").is_file()
    # merged/ is a transformers model: not for the Mamba classifier, which has no such class
    can_merge = method.can_merge(config) and backbone != "mamba"
    assert (tmp_path / "export" / "merged").is_dir() == can_merge

    (command,) = sweep_commands([str(REPO / "configs" / quickstart)], [0], [name], "r", [])
    assert any(method.class_path in part for part in command)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # the sweep's command parses into this method
        main([*command, "--print_config"])
    assert done.value.code in (0, None)
    assert method.class_path in capsys.readouterr().out

    # A method with many rows (peft's eight) is measured on its first and last: each row's
    # config is the method's own tests' business; here bench must accept and measure them.
    every = list(method.bench_configs(model_for(backbone), BenchSettings(targets)))
    chosen = tuple(every) if len(every) <= 2 else (every[0], every[-1])
    preset = BenchPreset(backbone=fields, seq_lens=(8,), batch_size=2, cpu_seq_lens=(8,),
                         cpu_batch_size=2, lora_targets=targets,
                         methods=(name,) if len(every) <= 2 else chosen)  # fmt: skip
    result = run_bench("tiny", preset, warmup=0, repeats=1)
    rows = {r["method"] for r in result.rows}
    # (a chosen row named like the method itself brings the method's other rows along)
    assert set(chosen) <= rows <= set(every), rows
