"""Our task metrics (torchmetrics) against scipy and the textbook formulas, on random data."""

import numpy as np
import pytest
import torch
from scipy import stats

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks.metrics import build_metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pearson_and_spearman_match_scipy(seed):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(200, generator=gen) * 5
    preds = target + torch.randn(200, generator=gen)
    metrics = build_metrics(("pearson", "spearman"), 1, "val")
    for chunk in range(4):  # updated batch by batch, as in validation
        metrics.update(preds[chunk * 50 : (chunk + 1) * 50], target[chunk * 50 : (chunk + 1) * 50])
    values = metrics.compute()
    assert float(values["val/pearson"]) == pytest.approx(stats.pearsonr(preds, target)[0], abs=1e-5)
    assert float(values["val/spearman"]) == pytest.approx(
        stats.spearmanr(preds, target)[0], abs=1e-5
    )


def _mcc(preds: np.ndarray, target: np.ndarray, k: int) -> float:
    """Gorodkin's multiclass MCC from the confusion matrix (binary: Matthews' formula)."""
    c = np.zeros((k, k))
    for t, p in zip(target, preds, strict=True):
        c[t, p] += 1
    s, correct = c.sum(), np.trace(c)
    p_k, t_k = c.sum(0), c.sum(1)
    return (correct * s - p_k @ t_k) / np.sqrt((s**2 - p_k @ p_k) * (s**2 - t_k @ t_k))


@pytest.mark.parametrize(("k", "seed"), [(2, 0), (2, 1), (3, 2)])
def test_mcc_accuracy_and_f1_match_the_formulas(k, seed):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (300,), generator=gen)
    noise = torch.randint(0, k, (300,), generator=gen)
    preds = torch.where(torch.rand(300, generator=gen) < 0.6, target, noise)
    names = ("mcc", "accuracy", "f1") if k == 2 else ("mcc", "accuracy")
    values = build_metrics(names, k, "val")(preds, target)
    p, t = preds.numpy(), target.numpy()
    assert float(values["val/mcc"]) == pytest.approx(_mcc(p, t, k), abs=1e-5)
    assert float(values["val/accuracy"]) == pytest.approx((p == t).mean(), abs=1e-6)
    if k == 2:
        tp, fp, fn = (
            ((p == 1) & (t == 1)).sum(),
            ((p == 1) & (t == 0)).sum(),
            ((p == 0) & (t == 1)).sum(),
        )
        assert float(values["val/f1"]) == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)


def test_grouped_exact_match_hand_computed():
    # groups 7 and 3 are split across the two updates; group 3 has one wrong option of two
    metrics = build_metrics(("f1", "accuracy", "exact_match"), 2, "val", grouped=True)
    metrics.update(torch.tensor([1, 0, 1]), torch.tensor([1, 0, 0]), groups=torch.tensor([7, 7, 3]))
    metrics.update(
        torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 1, 1]), groups=torch.tensor([7, 3, 5, 9])
    )
    values = metrics.compute()
    # group 7: 3/3 right; 3: 1/2; 5: 1/1; 9: 0/1 -> 2 of 4 questions all right
    assert float(values["val/exact_match"]) == pytest.approx(0.5)
    assert float(values["val/accuracy"]) == pytest.approx(5 / 7)  # per option, groups ignored
    assert float(values["val/f1"]) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1


def test_grouped_exact_match_merges_ranks_and_needs_groups():
    # two "ranks" each see part of a group: their cat states merge as DDP's sync gathers them
    a, b = (build_metrics(("exact_match",), 2, "val", grouped=True)["exact_match"] for _ in "ab")
    a.update(torch.tensor([1, 1]), torch.tensor([1, 1]), torch.tensor([0, 1]))
    b.update(torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([0, 2]))
    assert float(b.compute()) == pytest.approx(0.5)
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(2 / 3)  # group 0 has a wrong option on rank b
    with pytest.raises(SsmloraError, match="group"):
        a.update(torch.tensor([1]), torch.tensor([1]))


def test_mcc_is_zero_for_a_constant_prediction_and_pearson_otherwise():
    """GLUE's MCC (scikit-learn's): 0 when one class is predicted for everything (torchmetrics
    1.9 gave 0.0411 for CoLA's majority prediction, hiding a collapsed run); for two classes
    otherwise it is the Pearson correlation of the 0/1 labels and predictions."""
    from ssmlora_app.tasks.metrics import metric

    target = torch.tensor([1] * 276 + [0] * 124)
    mcc = metric("mcc", 2)
    mcc.update(torch.ones(200, dtype=torch.long), target[:200])  # two batches, one state
    mcc.update(torch.ones(200, dtype=torch.long), target[200:])
    assert float(mcc.compute()) == 0.0
    gen = torch.Generator().manual_seed(0)
    flip = torch.rand(400, generator=gen) < 0.3
    preds = torch.where(flip, 1 - target, target)
    mcc = metric("mcc", 2)
    mcc.update(preds, target)
    expected = np.corrcoef(preds.numpy(), target.numpy())[0, 1]
    assert float(mcc.compute()) == pytest.approx(expected, abs=1e-6)
    assert float(metric("mcc", 2)(target, target)) == pytest.approx(1.0)
