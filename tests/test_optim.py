"""Optimizer groups (trainable only, no decay on biases/norms/marked params) and LR schedules."""

import itertools

import pytest
import torch

from ssmlora_app.adapters import LoRAConfig, inject_adapters
from ssmlora_app.optim import CosineWarmupDecay, LinearWarmupDecay, param_groups
from tests.helpers import tiny_classifier


def test_groups_hold_trainable_parameters_only_and_split_decay():
    model = inject_adapters(tiny_classifier(), LoRAConfig(r=4))
    model.classifier.dense.bias._no_weight_decay = True  # also covered by ndim < 2
    groups = {g["name"]: g for g in param_groups(model)}
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    assert all(n.endswith(".bias") for n in no_decay)
    assert "classifier.dense.weight" in decay and any("lora_A" in n for n in decay)
    assert groups["no_decay"]["weight_decay"] == 0.0 and "weight_decay" not in groups["decay"]


def test_marked_and_norm_parameters_get_no_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model[0].weight._no_weight_decay = True
    groups = param_groups(model)
    assert len(groups) == 1 and groups[0]["name"] == "no_decay" and len(groups[0]["params"]) == 4


def _lrs(scheduler_cls, steps, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_cls(optimizer, steps, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_linear_warmup_then_decay_to_zero():
    lrs = _lrs(LinearWarmupDecay, 100, warmup_ratio=0.1)
    assert lrs[0] < lrs[5] < lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] == pytest.approx(1 / 90)


def test_cosine_decays_to_the_floor():
    lrs = _lrs(CosineWarmupDecay, 101, warmup_steps=0, min_lr_ratio=0.1)
    assert lrs[0] == pytest.approx(1.0) and lrs[50] == pytest.approx(0.55, abs=0.01)
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
