"""HRM options that follow the reference code (Δ clamp, frozen gate) and the calibration
statistics of the reduction: the empirical observability Gramian beside the controllability one
(adjoint states, FFT against a sequential reference, white noise against the closed form), and
the Hankel-singular-value plot in reduce's output."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

from ssmlora_app.adapters import (
    HRMConfig,
    HRMLayer,
    count_trainable_parameters,
    inject_adapters,
    load_adapter,
    save_adapter,
)
from ssmlora_app.adapters.hrm_calibration import (
    adjoint_states,
    adjoint_states_sequential,
    empirical_gramians,
    empirical_observability_gramians,
)
from ssmlora_app.adapters.hrm_reduce import HSV_PLOT_NAME, reduce_hrm_adapter
from ssmlora_app.errors import SsmloraError
from ssmlora_app.ssm.reduction import gramians
from ssmlora_app.ssm.scan import states_fft

D = 32


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4)  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def hrm_layers(model) -> list[HRMLayer]:
    return [m for m in model.modules() if isinstance(m, HRMLayer)]


def test_dt_clamp_bounds_the_step_and_is_off_by_default():
    assert HRMConfig().dt_clamp is False
    model = inject_adapters(tiny_llama(), HRMConfig(d_state=4, dt_clamp=True, dt_min=0.01,
                                                   dt_max=0.1))  # fmt: skip
    layer = hrm_layers(model)[0]
    with torch.no_grad():
        layer.log_dt.copy_(torch.tensor([-10.0, -3.0, 0.0, 5.0]))  # Δ ≈ 5e-5, 0.049, 0.69, 5.0
    A_bar, _, _ = layer.system()
    dt = F.softplus(layer.log_dt.detach()).clamp(0.01, 0.1)
    a = -torch.exp(layer.log_A.detach())
    torch.testing.assert_close(A_bar.detach(), torch.exp(dt * a))
    A_bar.sum().backward()
    grad = layer.log_dt.grad
    assert grad[1] != 0 and grad[0] == grad[2] == grad[3] == 0  # the clamp kills the gradient
    layer.dt_clamp = False
    assert not torch.allclose(layer.system()[0], A_bar.detach())


def test_reduce_follows_the_clamp_of_the_adapter_it_reads(tmp_path):
    model = inject_adapters(tiny_llama(), HRMConfig(d_state=8, gate_init=1.0, dt_clamp=True,
                                                   dt_max=0.05))  # fmt: skip
    with torch.no_grad():
        for layer in hrm_layers(model):
            layer.log_dt.add_(2.0)  # pushes Δ past dt_max: only the clamp keeps it there
    save_adapter(model, tmp_path / "full")
    reduce_hrm_adapter(tmp_path / "full", 1e-9, tmp_path / "exact")
    reduced = load_adapter(tiny_llama(), tmp_path / "exact")
    x = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reduced(input_ids=x).logits, model(input_ids=x).logits,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip


def test_a_frozen_gate_stays_at_its_init_and_the_ssm_trains():
    config = HRMConfig(d_state=4, gate_init=0.3, freeze_gate=True)
    model = inject_adapters(tiny_llama(), config)
    assert count_trainable_parameters(model) == 2 * (2 * 4 * D + 2 * 4)  # 2dD + 2d, no gate
    model(
        input_ids=torch.randint(3, 97, (2, 9)), labels=torch.randint(3, 97, (2, 9))
    ).loss.backward()
    for layer in hrm_layers(model):
        assert not layer.gate.requires_grad and layer.gate.grad is None
        assert float(layer.gate) == pytest.approx(0.3)
        assert layer.B.grad is not None and layer.B.grad.abs().sum() > 0
    with pytest.raises(SsmloraError, match="freeze_gate with train: gate"):
        HRMConfig(freeze_gate=True, train="gate").validate()


def test_adjoint_states_fft_equal_the_backward_recurrence():
    g = torch.Generator().manual_seed(0)
    A_bar = torch.rand(6, generator=g) * 0.9 + 0.05
    C = torch.randn(5, 6, generator=g)
    grads = torch.randn(2, 40, 5, generator=g)
    torch.testing.assert_close(adjoint_states(grads, A_bar, C).double(),
                               adjoint_states_sequential(grads, A_bar, C), rtol=1e-4, atol=1e-4)  # fmt: skip


def test_white_noise_gives_the_closed_form_gramians():
    """E[s sᵀ] under white unit inputs and E[λ λᵀ] under white unit output gradients are the
    closed-form Gramians: the empirical ones are on the same scale."""
    g = torch.Generator().manual_seed(1)
    A_bar = torch.rand(4, generator=g) * 0.6 + 0.2
    B = torch.randn(4, 3, generator=g)
    C = torch.randn(3, 4, generator=g)
    Wc, Wo = gramians(A_bar, B, C)
    u = torch.randn(4, 20000, 3, generator=g)
    s = states_fft(u @ B.T, A_bar)[:, 50:].reshape(-1, 4).double()
    lam = adjoint_states(u, A_bar, C)[:, :-50].reshape(-1, 4).double()
    for empirical, closed in ((s.T @ s / len(s), Wc), (lam.T @ lam / len(lam), Wo)):
        assert float((empirical - closed).norm() / closed.norm()) < 0.05


def test_reduction_with_both_empirical_gramians(tmp_path):
    model = inject_adapters(tiny_llama(), HRMConfig(d_state=12, gate_init=0.5))
    with torch.no_grad():
        for layer in hrm_layers(model):
            layer.C.mul_(3.0)
    save_adapter(model, tmp_path / "full")
    g = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(2):
        ids = torch.randint(3, 97, (2, 24), generator=g)
        mask = torch.ones(2, 24)
        mask[1, 18:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids})
    Wc = empirical_gramians(model, batches)
    Wo = empirical_observability_gramians(model, batches)
    assert set(Wo) == set(Wc) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    for W in Wo.values():
        assert W.shape == (12, 12) and torch.allclose(W, W.T)
        assert torch.linalg.eigvalsh(W).min() > -1e-10 * math.sqrt(float(W.trace()))
        assert float(W.trace()) > 0
    assert all(p.grad is None for p in model.parameters())  # no .grad was written
    assert all(layer.tap is None for layer in hrm_layers(model))
    report = reduce_hrm_adapter(tmp_path / "full", 0.05, tmp_path / "calibrated", gramians=Wc,
                                observability=Wo)  # fmt: skip
    closed = reduce_hrm_adapter(tmp_path / "full", 0.05, tmp_path / "closed")
    assert all(b is None for b in report.error_bounds.values())
    assert report.hsv != closed.hsv  # the data changed the singular values
    reduced = load_adapter(tiny_llama(), tmp_path / "calibrated")
    with torch.no_grad():
        assert torch.isfinite(reduced(input_ids=batches[0]["input_ids"]).logits).all()
    with pytest.raises(SsmloraError, match="needs batches with labels"):
        empirical_observability_gramians(model, [{"input_ids": batches[0]["input_ids"]}])


def test_reduce_writes_the_hankel_singular_value_plot(tmp_path):
    pytest.importorskip("matplotlib")
    model = inject_adapters(tiny_llama(), HRMConfig(d_state=8, gate_init=1.0))
    save_adapter(model, tmp_path / "full")
    reduce_hrm_adapter(tmp_path / "full", 0.1, tmp_path / "reduced")
    plot = tmp_path / "reduced" / HSV_PLOT_NAME
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
