"""The heads of extractive QA (``qa_outputs``) and multiple choice (``classifier`` over options)
under every adapter method that serves encoders (LoRA, SSMLoRA, HRM): the head trains, gradients
reach every trainable parameter and nothing frozen, and save -> load into a model whose head is
a different random draw gives the same outputs (the fresh head is saved whole)."""

import copy

import pytest
import torch
from transformers import AutoModelForMultipleChoice, AutoModelForQuestionAnswering

from ssmlora_app.adapters import (
    BenchSettings,
    get_method,
    inject_adapters,
    load_adapter,
    save_adapter,
)
from ssmlora_app.backbone import BackboneConfig, build_with_head

TINY_BERT = {"model_type": "bert", "vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
HEADS = {"qa": (AutoModelForQuestionAnswering, "qa_outputs"),
         "choice": (AutoModelForMultipleChoice, "classifier")}  # fmt: skip


def model_for(kind: str):
    return build_with_head(HEADS[kind][0], BackboneConfig(config=dict(TINY_BERT))).eval()


def inputs(kind: str) -> dict:
    g = torch.Generator().manual_seed(1)
    shape = (3, 10) if kind == "qa" else (3, 4, 10)  # (B, L) windows; (B, K, L) options
    ids = torch.randint(3, 120, shape, generator=g)
    mask = torch.ones_like(ids)
    mask[0, ..., 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def labels(kind: str) -> dict:
    if kind == "qa":
        return {
            "start_positions": torch.tensor([1, 2, 0]),
            "end_positions": torch.tensor([3, 2, 0]),
        }
    return {"labels": torch.tensor([0, 3, 1])}


def outputs(model, kind: str) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs(kind))
    return torch.cat([out.start_logits, out.end_logits]) if kind == "qa" else out.logits


def config_for(method: str):
    """The method's first bench configuration on a BERT encoder (SSMLoRA: ``full_model``)."""
    configs = get_method(method).bench_configs(model_for("qa"), BenchSettings(("query", "value")))
    if method == "ssmlora":
        return next(c for c in configs.values() if getattr(c, "preset", None) == "full_model")
    return next(iter(configs.values()))


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("method", ["lora", "ssmlora", "hrm"])
def test_the_task_head_trains_and_is_saved_whole(method, kind, tmp_path):
    head = HEADS[kind][1]
    model = inject_adapters(model_for(kind), copy.deepcopy(config_for(method))).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith(f"{head}.") for n in trainable), sorted(trainable)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # away from the init, so the checks below can fail
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model(**inputs(kind), **labels(kind)).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    model.eval()
    folder = save_adapter(model, tmp_path / "a")
    other = model_for(kind)
    with torch.no_grad():  # another draw of the fresh head: only the saved one gives the outputs
        for p in getattr(other, head).parameters():
            p.normal_(0, 0.5, generator=g)
    before = outputs(inject_adapters(copy.deepcopy(other), copy.deepcopy(config_for(method))), kind)
    assert (before - outputs(model, kind)).abs().max() > 1e-3
    loaded = load_adapter(other, folder)
    torch.testing.assert_close(outputs(loaded, kind), outputs(model, kind), rtol=0, atol=0)
