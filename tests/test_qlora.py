"""QLoRA: refused in one line before any weight loads where it cannot run (no GPU, no
bitsandbytes, a backbone not loaded in 4 bits); on a GPU with bitsandbytes, a 4-bit backbone with
LoRA that trains, saves and reloads."""

import importlib.util

import pytest
import torch

from ssmlora_app.adapters import (
    LoRAConfig,
    QLoRAConfig,
    count_trainable_parameters,
    inject_adapters,
    load_adapter,
    save_adapter,
)
from ssmlora_app.adapters.qlora import qlora_backbone_kwargs
from ssmlora_app.backbone import BackboneConfig, build_causal_lm, build_classifier
from ssmlora_app.cli import main
from ssmlora_app.errors import SsmloraError
from ssmlora_app.factory import build_model
from ssmlora_app.objectives import objective_for
from ssmlora_app.tasks import TaskInfo
from tests.conftest import REPO, TINY_ROBERTA

INFO = TaskInfo(task="t", num_labels=2, problem_type="single_label_classification",
                metrics=("accuracy",), eval_splits=("validation",), objective="lm_teacher_forced",
                vocab_size=120, pad_token_id=0)  # fmt: skip
MISSING = "nobody/no-such-backbone"
"""A hub id that cannot load (offline): a refusal that names the GPU shows nothing was read first."""

needs_4bit = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="needs bitsandbytes (pip install -e '.[dev]'): a GPU, or its CPU kernels",
)


@pytest.mark.slow  # builds the CLI parser
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_on_cpu_qlora_stops_before_the_backbone_loads(capsys):
    with pytest.raises(SsmloraError, match="needs a CUDA GPU") as err:
        build_model(BackboneConfig(name_or_path=MISSING), QLoRAConfig(), objective_for(INFO))
    assert "\n" not in str(err.value)
    adapter = '{"class_path": "ssmlora_app.adapters.QLoRAConfig", "init_args": {}}'
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(REPO / "configs" / "quickstart_random.yaml"),
              f"--model.adapter={adapter}", "--trainer.logger=false"])  # fmt: skip
    assert done.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("ssmlora: error: QLoRA loads the backbone in 4 bits")


def test_without_bitsandbytes_qlora_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(SsmloraError, match="needs the bitsandbytes package"):
        build_model(BackboneConfig(name_or_path=MISSING), QLoRAConfig(), objective_for(INFO))


def test_a_backbone_not_loaded_in_4_bits_is_refused():
    model = build_classifier(BackboneConfig(config=TINY_ROBERTA), 2, "single_label_classification")
    with pytest.raises(SsmloraError, match="is not a 4-bit layer"):
        inject_adapters(model, QLoRAConfig(target_modules=["query", "value"]))


def test_bad_options_are_refused():
    with pytest.raises(SsmloraError, match="compute_dtype must be one of"):
        QLoRAConfig(compute_dtype="int8").validate()


LLAMA = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64}  # fmt: skip
"""A tiny Llama, saved so that it loads through ``from_pretrained`` (and so in 4 bits)."""


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("qlora") / "llama"
    build_causal_lm(BackboneConfig(config=LLAMA), 256, 0).save_pretrained(path)
    return BackboneConfig(name_or_path=str(path))


def _qlora(**kwargs) -> QLoRAConfig:
    """LoRA r=8 on q/v of the 4-bit model (on a GPU, or with bitsandbytes' CPU kernels), fp32
    products, so that it can equal the fp32 reference."""
    return QLoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"], allow_cpu=True,
                       compute_dtype="float32", **kwargs)  # fmt: skip


def _fp32_products(model):
    """As QLoRA's injection does: no switch to bitsandbytes' bf16 CPU inference kernel in eval
    mode (through it, the logits differ by ~1e-2 from the fp32 products)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model.eval()


def _lora_tensors(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _dequantised_reference(model, backbone):
    """The same Llama in fp32 whose linears hold the 4-bit layers' dequantised weights, with
    LoRA holding the QLoRA model's factors: what QLoRA computes, without bitsandbytes."""
    import bitsandbytes as bnb

    reference = build_causal_lm(backbone)
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            reference.get_submodule(name.replace(".base_layer", "")).weight.data.copy_(weight)
    config = LoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    reference = inject_adapters(reference, config)
    reference.load_state_dict(_lora_tensors(model), strict=False)
    return reference.to(next(iter(_lora_tensors(model).values())).device)


def _grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.detach().clone() for n, p in _lora_tensors(model).items()}


@needs_4bit
@pytest.mark.slow
def test_qlora_computes_lora_on_the_dequantised_weights_and_trains_after_an_evaluation(
    saved_llama,
):
    """Logits and the LoRA gradients equal the fp32 reference (LoRA on the dequantised
    weights); zero effect at init against the 4-bit backbone alone; and still equal after an
    evaluation pass: bitsandbytes repacks a CPU weight for a kernel without a backward the first
    time the layer runs in eval mode (before the fix, training after validation went wrong)."""
    import bitsandbytes as bnb

    model = build_model(saved_llama, _qlora(), objective_for(INFO))
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    trainable = _lora_tensors(model)
    assert len(trainable) == 2 * 2 * 2  # A and B of q and v in 2 layers, nothing else
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert count_trainable_parameters(model) == 2 * 8 * (64 + 64) + 2 * 8 * (64 + 32)  # q, v
    base = _fp32_products(build_causal_lm(saved_llama, load_kwargs=qlora_backbone_kwargs(_qlora())))
    device = q_proj.lora_A.weight.device
    ids = torch.randint(3, 256, (4, 24), device=device)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids).logits, base(input_ids=ids).logits)
        for tensor in trainable.values():
            tensor.add_(torch.randn_like(tensor) * 0.05)
    reference = _dequantised_reference(model, saved_llama)
    tolerance = (
        {"atol": 1e-4, "rtol": 1e-3} if device.type == "cpu" else {"atol": 0.05, "rtol": 0.05}
    )
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits,
                                   **tolerance)  # fmt: skip
    model.train()
    expected = _grads(reference, ids)
    for name, grad in _grads(model, ids).items():
        torch.testing.assert_close(grad, expected[name], **tolerance, msg=name)
    with torch.no_grad():
        model.eval()(input_ids=ids)  # a validation pass
    model.train()
    for name, grad in _grads(model, ids).items():
        torch.testing.assert_close(grad, expected[name], **tolerance, msg=name)


@needs_4bit
@pytest.mark.slow
def test_the_4bit_backbone_trains_lora_saves_and_reloads_in_peft_too(saved_llama, tmp_path):
    from peft import PeftModel

    config = _qlora()
    model = build_model(saved_llama, config, objective_for(INFO))
    device = model.model.layers[0].self_attn.q_proj.lora_A.weight.device
    ids = torch.randint(3, 256, (8, 32), device=device)
    optimizer = torch.optim.AdamW(_lora_tensors(model).values(), lr=3e-2)
    losses = []
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses  # random tokens: 5.55 -> 5.06 here
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    save_adapter(model, tmp_path / "adapter")
    fresh = build_causal_lm(saved_llama, load_kwargs=qlora_backbone_kwargs(config))
    reloaded = load_adapter(fresh, tmp_path / "adapter").eval()
    fresh = _fp32_products(build_causal_lm(saved_llama, load_kwargs=qlora_backbone_kwargs(config)))
    in_peft = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained)
        torch.testing.assert_close(in_peft(input_ids=ids).logits, trained)
