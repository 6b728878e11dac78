"""Balanced truncation: Glover's bound, modal form, exactness at eps=0, the adapter round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ssmlora_app.adapters import (
    HRMConfig,
    HRMLayer,
    HRMModalLayer,
    inject_adapters,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from ssmlora_app.adapters.hrm_reduce import empirical_gramians, reduce_hrm_adapter
from ssmlora_app.errors import SsmloraError
from ssmlora_app.ssm.reduction import (
    STABLE_RADIUS,
    balanced_truncation,
    dense_impulse_response,
    gramians,
    hinf_norm,
    impulse_response,
    to_modal,
)
from ssmlora_app.ssm.scan import choose_scan


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def stable_system(d: int, D: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.empty(d, dtype=torch.float64).uniform_(0.2, 0.98, generator=g)
    B = torch.randn(d, D, dtype=torch.float64, generator=g)
    C = torch.randn(D, d, dtype=torch.float64, generator=g)
    return a, B, C


def test_gramians_solve_stein_equations():
    a, B, C = stable_system(6, 3, 0)
    Wc, Wo = gramians(a, B, C)
    A = torch.diag(a)
    assert torch.allclose(Wc, A @ Wc @ A.T + B @ B.T)
    assert torch.allclose(Wo, A.T @ Wo @ A + C.T @ C)


@pytest.mark.parametrize(("seed", "eps"), [(0, 0.1), (1, 0.03), (2, 0.3), (3, 0.01)])
def test_glover_bound(seed, eps):
    a, B, C = stable_system(16, 4, seed)
    bt = balanced_truncation(a, B, C, eps)
    r = bt.order
    assert 1 <= r < 16
    assert (bt.hsv[:r] / bt.hsv[0] >= eps).all() and (bt.hsv[r:] / bt.hsv[0] < eps).all()
    # G − Ĝ as one block system: [C, −Ĉ] blockdiag(diag(a), Â) [B; B̂]
    A_err = torch.block_diag(torch.diag(a), bt.A)
    err = hinf_norm(None, torch.cat([B, bt.B]), torch.cat([C, -bt.C], 1), A=A_err)
    assert err <= bt.error_bound * (1 + 1e-9)
    assert err >= 0.99 * float(bt.hsv[r])  # no order-r system does better than σ_{r+1}
    assert bt.error_bound == pytest.approx(2 * float(bt.hsv[r:].sum()))


def test_modal_form_equals_dense_reduced_system():
    a, B, C = stable_system(16, 4, 4)
    bt = balanced_truncation(a, B, C, 0.01)
    modal = to_modal(bt.A, bt.B, bt.C)
    assert modal.order == bt.order
    assert (modal.lam[: modal.lam.numel() - modal.n_complex].imag == 0).all()
    assert (modal.lam.abs() < 1).all()
    h_dense = dense_impulse_response(bt.A, bt.B, bt.C, 200)
    assert rel_err(impulse_response(modal.lam, modal.B, modal.C, 200), h_dense) <= 1e-8


def test_modal_form_keeps_one_mode_per_conjugate_pair():
    g = torch.Generator().manual_seed(5)
    Q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=g)).Q
    A = Q @ torch.diag(torch.tensor([0.9, 0.5, -0.3, 0.2, 0.7, 0.1], dtype=torch.float64)) @ Q.T
    A = A + 0.4 * (Q[:, :1] @ Q[:, 1:2].T - Q[:, 1:2] @ Q[:, :1].T)  # complex pair
    B = torch.randn(6, 3, dtype=torch.float64, generator=g)
    C = torch.randn(3, 6, dtype=torch.float64, generator=g)
    modal = to_modal(A, B, C)
    assert (modal.lam.imag.abs() > 1e-6).sum() == 1 and modal.lam.numel() == 5
    assert modal.n_complex == 1 and modal.order == 6
    h_dense = dense_impulse_response(A, B, C, 100)
    assert rel_err(impulse_response(modal.lam, modal.B, modal.C, 100), h_dense) <= 1e-8


def test_unstable_modes_are_pulled_inside():
    A = torch.tensor([[1.2, 0.0], [0.3, 0.5]], dtype=torch.float64)
    modal = to_modal(
        A, torch.ones(2, 1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    )
    assert modal.lam.abs().max() == pytest.approx(STABLE_RADIUS)


def test_eps_zero_is_exact():
    a, B, C = stable_system(8, 3, 6)
    bt = balanced_truncation(a, B, C, 0.0)
    assert bt.order == 8 and bt.error_bound == 0.0
    modal = to_modal(bt.A, bt.B, bt.C)
    h = impulse_response(a, B, C, 200)
    assert rel_err(impulse_response(modal.lam, modal.B, modal.C, 200), h) <= 1e-7
    with pytest.raises(SsmloraError, match="eps"):
        balanced_truncation(a, B, C, 1.5)


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture
def trained_dir(tmp_path):
    model = inject_adapters(tiny_llama(), HRMConfig(d_state=16, gate_init=1.0, dt_max=0.5))
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, HRMLayer):
                layer.log_dt.add_(0.3 * torch.randn_like(layer.log_dt))
    save_adapter(model, tmp_path / "full")
    return model, tmp_path


def layer_impulses(model, length: int = 256) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for name, layer in model.named_modules():
            if isinstance(layer, HRMLayer | HRMModalLayer):
                lam, B, C = (t.to(torch.complex128) for t in layer.system())
                out[name] = impulse_response(lam, B, C, length)
    return out


def test_reduce_adapter_round_trip(trained_dir):
    model, tmp = trained_dir
    report = reduce_hrm_adapter(tmp / "full", 0.1, tmp / "reduced")
    assert set(report.orders) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    assert all(1 <= r < 16 for r in report.orders.values())
    assert 0 < report.params_after < report.params_before and 0 < report.saving < 1
    assert "saving" in report.summary()
    cfg = read_adapter_config(tmp / "reduced")
    assert cfg.modal and cfg.state_sizes == report.orders
    assert cfg.complex_modes == report.complex_modes
    hsv = json.loads((tmp / "reduced" / "hankel_singular_values.json").read_text())
    assert len(hsv["model.layers.0.mlp"]) == 16

    reduced = load_adapter(tiny_llama(), tmp / "reduced")
    modal = [m for m in reduced.modules() if isinstance(m, HRMModalLayer)]
    # the reduced (complex-mode) adapter keeps the FFT path
    assert len(modal) == 2 and all(choose_scan(m.scan, 30, complex_=True) == "fft" for m in modal)
    full_h, red_h = layer_impulses(model), layer_impulses(reduced)
    for name, bound in report.error_bounds.items():
        # |h_k(i, j)| ≤ ‖G‖_H∞ for every entry, so the impulse error is within Glover's bound
        assert float((full_h[name] - red_h[name]).abs().max()) <= bound
    x = torch.randint(3, 97, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fft = reduced(input_ids=x).logits
        for m in modal:
            m.scan = "sequential"
        assert torch.allclose(fft, reduced(input_ids=x).logits, rtol=1e-5, atol=1e-5)
        reduced(input_ids=x).logits.sum()  # runs
    with pytest.raises(SsmloraError, match="already reduced"):
        reduce_hrm_adapter(tmp / "reduced", 0.1, tmp / "again")


def test_tiny_eps_reproduces_the_model(trained_dir):
    model, tmp = trained_dir
    report = reduce_hrm_adapter(tmp / "full", 1e-7, tmp / "exact")
    reduced = load_adapter(tiny_llama(), tmp / "exact")
    x = torch.randint(3, 97, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = model(input_ids=x).logits, reduced(input_ids=x).logits
    assert max(report.error_bounds.values()) < 1e-4
    assert torch.allclose(out, ref, atol=1e-4)


def test_empirical_gramians_mode(trained_dir):
    model, tmp = trained_dir
    g = torch.Generator().manual_seed(2)
    batches = [
        {
            "input_ids": torch.randint(3, 97, (2, 24), generator=g),
            "attention_mask": torch.ones(2, 24),
        }
        for _ in range(2)
    ]
    batches[1]["attention_mask"][:, 20:] = 0
    W = empirical_gramians(model, batches)
    assert set(W) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    for Wc in W.values():
        assert Wc.shape == (16, 16) and torch.allclose(Wc, Wc.T)
        assert torch.linalg.eigvalsh(Wc).min() > -1e-12 * math.sqrt(float(Wc.trace()))
    report = reduce_hrm_adapter(tmp / "full", 0.1, tmp / "empirical", gramians=W)
    assert all(b is None for b in report.error_bounds.values())
    reduced = load_adapter(tiny_llama(), tmp / "empirical")
    with torch.no_grad():
        assert torch.isfinite(reduced(input_ids=batches[0]["input_ids"]).logits).all()


def test_modal_layer_count_and_gradients():
    layer = HRMModalLayer(torch.nn.Linear(8, 8), 8, 5, n_complex=2, gate_init=0.5)
    count = sum(p.numel() for n, p in layer.named_parameters() if "base" not in n)
    assert count == 2 * 5 * 8 + 2 * (5 - 2) + 1
    with torch.no_grad():
        layer.B.normal_()
        layer.C.normal_()
        layer.theta[1:].uniform_(0.1, 1.0)
    layer(torch.randn(2, 9, 8)).square().sum().backward()
    for name, p in layer.named_parameters():
        if "base" not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
