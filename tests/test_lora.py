"""LoRA: equality with peft, zero at init, merge, gradients, exact parameter counts."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ssmlora_app.adapters import (
    LoRAConfig,
    LoRALinear,
    count_trainable_parameters,
    inject_adapters,
    merge_adapters,
    unmerge_adapters,
)
from ssmlora_app.errors import SsmloraError
from tests.helpers import meta_classifier, randomise, tiny_classifier, twin

GPT2 = {"model_type": "gpt2", "vocab_size": 120, "n_embd": 32, "n_layer": 2, "n_head": 4,
        "n_positions": 40, "pad_token_id": 0}  # fmt: skip


def _ids(batch=3, length=9):
    return torch.randint(3, 100, (batch, length))


@pytest.mark.parametrize(
    ("fields", "targets", "rslora"),
    [
        (None, ["query", "value"], False),
        (None, ["query", "key", "dense"], True),
        (GPT2, ["c_attn", "c_fc"], False),
    ],
)
def test_equals_peft_lora(fields, targets, rslora):
    base = tiny_classifier(fields)
    ours = inject_adapters(
        twin(base), LoRAConfig(r=4, alpha=8, target_modules=targets, use_rslora=rslora)
    )
    theirs = get_peft_model(
        twin(base),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, use_rslora=rslora, task_type="SEQ_CLS"
        ),
    )
    randomise(lambda n: "lora_" in n, ours)
    their_params = dict(theirs.named_parameters())
    ours_lora = {n: p for n, p in ours.named_parameters() if "lora_" in n}
    assert ours_lora, "no LoRA parameters were created"
    with torch.no_grad():
        for name, p in ours_lora.items():
            key = "base_model.model." + name.replace(".weight", ".default.weight")
            their_params[key].copy_(p)
    ours.eval(), theirs.eval()
    ids = _ids()
    expected = theirs(input_ids=ids).logits
    assert torch.allclose(ours(input_ids=ids).logits, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-4)


def test_the_update_is_one_gemm_into_the_base_output_and_equals_float64():
    layer = LoRALinear(torch.nn.Linear(24, 40), r=4, alpha=8, dropout=0.0, rslora=False)
    layer.base_layer.requires_grad_(False)
    with torch.no_grad():
        layer.lora_B.weight.normal_(std=0.1)
    seen = []
    layer.base_layer.register_forward_hook(lambda m, i, out: seen.append(out.data_ptr()))
    x = torch.randn(3, 7, 24, requires_grad=True)
    y = layer(x)
    assert y.shape == (3, 7, 40) and y.data_ptr() == seen[0]  # added in place into W0's output
    x64 = x.detach().double().requires_grad_()
    params64 = [p.detach().double().requires_grad_() for p in (layer.lora_A.weight,
                                                               layer.lora_B.weight)]  # fmt: skip
    W0, b = layer.base_layer.weight.double(), layer.base_layer.bias.double()
    ref = x64 @ W0.T + b + layer.scaling * ((x64 @ params64[0].T) @ params64[1].T)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    y.backward(grad.float())
    ref.backward(grad)
    got = [x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]
    for ours, theirs in zip(got, [x64.grad, *(p.grad for p in params64)]):
        torch.testing.assert_close(ours.double(), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("autocast", [True, False])
def test_bf16_base_layer_with_and_without_autocast(autocast):
    """bf16 base weights: under autocast the GEMM runs in bf16 into the bf16 output; without it
    the fp32 adapter's product is computed in fp32 and cast (the fallback path)."""
    layer = LoRALinear(torch.nn.Linear(24, 40).bfloat16(), r=4, alpha=8, dropout=0.0, rslora=False)
    with torch.no_grad():
        layer.lora_B.weight.normal_(std=0.1)
    x = torch.randn(2, 5, 24).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 40)
    ref = (
        x.double() @ layer.base_layer.weight.double().T
        + layer.base_layer.bias.double()
        + layer.scaling * ((x.double() @ layer.lora_A.weight.double().T)
                           @ layer.lora_B.weight.double().T)
    )  # fmt: skip
    torch.testing.assert_close(y.double(), ref, atol=0.1, rtol=0.02)  # bf16: ~3 digits
    y.float().sum().backward()
    assert layer.lora_A.weight.grad.dtype == layer.lora_B.weight.grad.dtype == torch.float32
    assert layer.lora_B.weight.grad.abs().sum() > 0


def test_zero_at_init_and_only_adapter_and_head_trainable():
    base = tiny_classifier()
    model = inject_adapters(twin(base), LoRAConfig(r=4))
    ids = _ids()
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trainable"
    assert all(".lora_A." in n or ".lora_B." in n or n.startswith("classifier.") for n in trainable)
    assert {n for n in trainable if n.startswith("classifier.")} == {
        n for n, _ in model.classifier.named_parameters(prefix="classifier")
    }
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 4  # query and value in both layers
    assert all(m.lora_A.weight.dtype == m.lora_B.weight.dtype == torch.float32 for m in layers)


def test_gradients_reach_every_trainable_parameter():
    model = inject_adapters(tiny_classifier(), LoRAConfig(r=4, target_modules=["query", "value"]))
    model.train()
    randomise(lambda n: "lora_B" in n, model)  # B=0 would block A's gradient
    out = model(input_ids=_ids(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("fields", [None, GPT2])
def test_merge_and_unmerge(fields):
    targets = ["c_attn"] if fields else ["query", "value"]
    model = inject_adapters(tiny_classifier(fields), LoRAConfig(r=4, target_modules=targets))
    randomise(lambda n: "lora_" in n, model)
    ids = _ids()
    before = model(input_ids=ids).logits
    weights = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
    merge_adapters(model)
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)
    changed = [
        n
        for n, p in model.named_parameters()
        if "base_layer.weight" in n and not torch.equal(p, weights[n])
    ]
    assert changed, "merge changed no base weight"
    unmerge_adapters(model)
    for name, p in model.named_parameters():
        if name in weights:
            assert torch.allclose(p, weights[name], atol=1e-6), name
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)


def test_roberta_base_query_value_count():
    model = meta_classifier("roberta")  # roberta-base shapes: 12 layers, 768 hidden
    inject_adapters(model, LoRAConfig(r=8, target_modules=["query", "value"]))
    assert count_trainable_parameters(model, include_head=False) == 12 * 2 * 8 * (768 + 768)
    head = 768 * 768 + 768 + 768 * 2 + 2  # RobertaClassificationHead: dense + out_proj
    assert count_trainable_parameters(model) == 294_912 + head


def test_rslora_scaling():
    model = inject_adapters(tiny_classifier(), LoRAConfig(r=4, alpha=8, use_rslora=True))
    layer = next(m for m in model.modules() if isinstance(m, LoRALinear))
    assert layer.scaling == pytest.approx(8 / 2)


@pytest.mark.parametrize("r", [0, -3])
def test_rank_must_be_positive(r):
    with pytest.raises(SsmloraError, match="rank r must be a positive integer"):
        inject_adapters(tiny_classifier(), LoRAConfig(r=r))


def test_target_matching_nothing_lists_candidates():
    with pytest.raises(SsmloraError, match=r"matches no layer.*attention\.self\.query"):
        inject_adapters(tiny_classifier(), LoRAConfig(target_modules=["q_proj"]))


def test_injecting_twice_is_refused():
    model = inject_adapters(tiny_classifier(), LoRAConfig())
    with pytest.raises(SsmloraError, match="already has an adapter"):
        inject_adapters(model, LoRAConfig())


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = inject_adapters(
            tiny_classifier(), LoRAConfig(r=4, target_modules=["query", "value"])
        )
        randomise(lambda n: "lora_B" in n, model)
        model.train()
        model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model(input_ids=_ids(), labels=torch.tensor([0, 1, 1])).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert grads[1][name] is not None and torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_lora_on_mamba_reparametrises_the_weights_the_mixer_reads():
    """Mamba's mixer reads out_proj.weight directly: a wrapper would be bypassed, so LoRA becomes
    a weight re-parametrisation there, the same arithmetic as SDT's LoRA (sparse_targets: [])."""
    from ssmlora_app.adapters import SDTConfig
    from ssmlora_app.adapters.lora import LoRAWeight
    from ssmlora_app.backbone import BackboneConfig, build_classifier

    fields = {"model_type": "mamba", "vocab_size": 64, "hidden_size": 16, "state_size": 4,
              "num_hidden_layers": 1, "expand": 2}  # fmt: skip

    def mamba():
        return build_classifier(BackboneConfig(config=fields), 2, "single_label_classification")

    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    model = inject_adapters(mamba(), LoRAConfig(r=4, alpha=8, target_modules=["out_proj"]))
    out_proj = model.backbone.layers[0].mixer.out_proj
    assert isinstance(out_proj.parametrizations.weight[0], LoRAWeight)
    sdt = inject_adapters(
        mamba(), SDTConfig(r=4, alpha=8, target_modules=["out_proj"], sparse_targets=[])
    )
    randomise(lambda n: "lora_" in n, model)
    sdt.load_state_dict(model.state_dict())
    with torch.no_grad():
        adapted, frozen = model(input_ids=ids).logits, mamba()(input_ids=ids).logits
        assert not torch.allclose(adapted, frozen, atol=1e-4)  # the mixer sees the update
        torch.testing.assert_close(adapted, sdt(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises(SsmloraError, match="re-parametrisation there, which has no input"):
        inject_adapters(mamba(), LoRAConfig(target_modules=["out_proj"], dropout=0.1))
