"""Optimizer groups (trainable only, no decay on biases/norms/marked params) and LR schedules."""

import itertools
from functools import partial

import pytest
import torch

from ssmlora_app.adapters import LoRAConfig, inject_adapters
from ssmlora_app.optim import CosineWarmupDecay, LinearWarmupDecay, build_optimizer, param_groups
from tests.helpers import randomise, tiny_classifier


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


def _adapted(seed=0):
    model = inject_adapters(tiny_classifier(seed=seed), LoRAConfig(r=4))
    randomise(lambda n: "lora_B" in n, model)
    return model


def test_adamw_is_built_foreach_and_steps_as_the_for_loop_does():
    """The factory's AdamW runs multi-tensor (``foreach``) where it was left unset; its steps
    equal the for-loop implementation's (float rounding apart)."""
    models = [_adapted(), _adapted()]
    fast = build_optimizer(partial(torch.optim.AdamW, lr=1e-2), models[0])
    slow = build_optimizer(partial(torch.optim.AdamW, lr=1e-2, foreach=False), models[1])
    assert [g["foreach"] for g in fast.param_groups] == [True] * len(fast.param_groups)
    assert fast.defaults["foreach"] is True
    assert [g["foreach"] for g in slow.param_groups] == [False] * len(slow.param_groups)
    assert [g["weight_decay"] for g in fast.param_groups] == [0.01, 0.0]  # param_groups' split
    ids, labels = torch.randint(3, 100, (3, 9)), torch.tensor([0, 1, 1])
    for _ in range(3):
        for model, optimizer in zip(models, (fast, slow)):
            optimizer.zero_grad()
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
    first = dict(models[0].named_parameters())
    moved = 0
    for name, p in models[1].named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(first[name], p, atol=1e-6, rtol=1e-5)
            moved += not torch.equal(p, dict(_adapted().named_parameters())[name])
    assert moved > 4  # the steps changed the adapter and the head


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (partial(torch.optim.AdamW, lr=1e-3, fused=True), None),  # fused is kept as chosen
        (partial(torch.optim.SGD, lr=1e-3), True),  # any torch optimizer with a foreach option
        (partial(torch.optim.SparseAdam, lr=1e-3), "absent"),  # none: unchanged
    ],
)
def test_foreach_only_where_left_unset(factory, expected):
    model = torch.nn.Linear(4, 4)
    optimizer = build_optimizer(factory, model)
    assert optimizer.param_groups[0].get("foreach", "absent") == expected
