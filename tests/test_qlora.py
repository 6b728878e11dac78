"""QLoRA: refused in one line before any weight loads where it cannot run (no GPU, no
bitsandbytes, a backbone not loaded in 4 bits); on a GPU with bitsandbytes, a 4-bit backbone with
LoRA that trains, saves and reloads."""

import importlib.util

import pytest
import torch

from ssmlora_app.adapters import QLoRAConfig, inject_adapters, load_adapter, save_adapter
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
MISSING = "/nonexistent/backbone"
"""A backbone that cannot load: a refusal that names the GPU shows nothing was read first."""

GPU_4BIT = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


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


@pytest.mark.slow
@pytest.mark.skipif(not GPU_4BIT, reason="needs a CUDA GPU and bitsandbytes")
def test_on_a_gpu_the_4bit_backbone_trains_lora_and_reloads(tmp_path):
    import bitsandbytes as bnb

    llama = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 64}  # fmt: skip
    build_causal_lm(BackboneConfig(config=llama), 256, 0).save_pretrained(tmp_path / "llama")
    backbone = BackboneConfig(name_or_path=str(tmp_path / "llama"))
    config = QLoRAConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    model = build_model(backbone, config, objective_for(INFO))
    assert isinstance(model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 and p.is_cuda for p in trainable)
    ids = torch.randint(3, 256, (8, 32), device="cuda")
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.5, losses
    model.eval()
    save_adapter(model, tmp_path / "adapter")
    fresh = build_causal_lm(backbone, load_kwargs=qlora_backbone_kwargs(config))
    reloaded = load_adapter(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
