"""Calibration statistics for HRM's balanced truncation (HRM paper §3.4, the reduction of an
adapter initialised from data): empirical Gramians of each layer's SSM, measured on real batches.

For a layer ``s_t = Ā s_{t−1} + B̄ u_t``, ``y_t = C s_t``:

* controllability ``Wc = E[s_t s_tᵀ]`` over the states the inputs ``u`` drive;
* observability ``Wo = E[λ_t λ_tᵀ]`` over the **adjoint** states ``λ_t = ∂L/∂s_t``: the dual
  system run backwards in time, driven by the loss gradient at the SSM's output,
  ``λ_t = Ā ⊙ λ_{t+1} + Cᵀ ∂L/∂y_t``.

With white unit-variance inputs (resp. output gradients) these expectations are the closed-form
Gramians of :func:`ssmlora_app.ssm.reduction.gramians`, so the empirical and the closed forms
are on one scale; with real data, states that real inputs do not excite (resp. that the loss does
not read) get small Gramians and are cut first. Both run through the FFT scan (the adjoint on the
reversed sequence), with a sequential reference beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ssmlora_app.adapters.hrm_layers import HRMLayer, hrm_layers
from ssmlora_app.errors import SsmloraError
from ssmlora_app.ssm.scan import states_fft


def _layers(model: nn.Module) -> dict[str, HRMLayer]:
    layers = {n: m for n, m in hrm_layers(model).items() if isinstance(m, HRMLayer)}
    if not layers:
        raise SsmloraError("The model has no (full) HRM layers: inject or load an HRM adapter.")
    return layers


def adjoint_states(g: Tensor, A_bar: Tensor, C: Tensor) -> Tensor:
    """``λ_t = Σ_{k≥t} Ā^{k−t} Cᵀ g_k`` for output gradients ``g (B, L, D)``, ``Ā (d,)``,
    ``C (D, d)``: ``(B, L, d)``, the causal FFT scan on the reversed sequence."""
    driven = torch.flip(g.float() @ C.float(), dims=[1])  # (B, L, d): Cᵀ g_t, last step first
    return torch.flip(states_fft(driven, A_bar.float()), dims=[1])


def adjoint_states_sequential(g: Tensor, A_bar: Tensor, C: Tensor) -> Tensor:
    """Reference for :func:`adjoint_states`: ``λ_t = Ā ⊙ λ_{t+1} + Cᵀ g_t``, from the end."""
    lam = torch.zeros(g.shape[0], C.shape[1], dtype=torch.float64)
    out = []
    for g_t in reversed(g.double().unbind(1)):
        lam = A_bar.double() * lam + g_t @ C.double()
        out.append(lam)
    return torch.stack(out[::-1], dim=1)


def _second_moment(values: Tensor, mask: Tensor | None) -> tuple[Tensor, int]:
    """``(Σ v vᵀ (d, d) float64, count)`` over the positions of ``values (B, L, d)`` where
    ``mask (B, L)`` is 1 (all positions without a mask)."""
    keep = torch.ones(values.shape[:2], dtype=torch.bool) if mask is None else mask > 0
    rows = values[keep.to(values.device)].double().cpu()  # (N, d)
    return rows.T @ rows, rows.shape[0]


@torch.no_grad()
def empirical_gramians(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Controllability Gramians ``Wc = E[s_t s_tᵀ] (d, d)`` (float64) of each :class:`HRMLayer`
    of ``model``, from the states its inputs drive over ``batches`` (model inputs; ``labels`` are
    dropped, positions with ``attention_mask == 0`` are skipped)."""
    layers = _layers(model)
    sums = {n: torch.zeros(m.B.shape[0], m.B.shape[0], dtype=torch.float64) for n, m in layers.items()}  # fmt: skip
    counts = dict.fromkeys(layers, 0)
    mask: list[Tensor | None] = [None]

    def tap_for(name: str, layer: HRMLayer):
        def tap(u: Tensor, y: Tensor) -> None:
            A_bar, B_bar, _ = layer.system()
            moment, count = _second_moment(states_fft(u.float() @ B_bar.T, A_bar), mask[0])
            sums[name] += moment
            counts[name] += count

        return tap

    try:
        for name, layer in layers.items():
            layer.tap = tap_for(name, layer)
        for batch in batches:
            mask[0] = batch.get("attention_mask")
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for layer in layers.values():
            layer.tap = None
    if not all(counts.values()):
        raise SsmloraError("empirical_gramians saw no tokens: pass at least one non-empty batch.")
    return {n: sums[n] / counts[n] for n in layers}


def empirical_observability_gramians(
    model: nn.Module, batches: Iterable[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Observability Gramians ``Wo = E[λ_t λ_tᵀ] (d, d)`` (float64) of each :class:`HRMLayer`,
    ``λ`` the adjoint state driven by ``∂L/∂y`` (see the module docstring), over ``batches``
    (model inputs with ``labels``: the model's loss is differentiated; no parameter's ``.grad``
    is touched). Positions with ``attention_mask == 0`` are skipped."""
    layers = _layers(model)
    sums = {n: torch.zeros(m.B.shape[0], m.B.shape[0], dtype=torch.float64) for n, m in layers.items()}  # fmt: skip
    counts = dict.fromkeys(layers, 0)
    outputs: dict[str, Tensor] = {}

    def tap_for(name: str):
        def tap(u: Tensor, y: Tensor) -> None:
            if not y.requires_grad:  # a frozen model: y is a leaf, track from here
                y.requires_grad_(True)
            outputs[name] = y

        return tap

    try:
        for name, layer in layers.items():
            layer.tap = tap_for(name)
        for batch in batches:
            if "labels" not in batch:
                raise SsmloraError(
                    "empirical_observability_gramians needs batches with labels (the loss's "
                    "gradient at each SSM output drives the adjoint states)."
                )
            outputs.clear()
            with torch.enable_grad():
                loss = model(**batch).loss
                names = list(outputs)
                grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
            for name, g in zip(names, grads, strict=True):
                if g is None:
                    continue
                A_bar, _, C = (t.detach() for t in layers[name].system())
                lam = adjoint_states(g, A_bar, C)
                moment, count = _second_moment(lam, batch.get("attention_mask"))
                sums[name] += moment
                counts[name] += count
    finally:
        for layer in layers.values():
            layer.tap = None
        outputs.clear()
    if not all(counts.values()):
        raise SsmloraError(
            "empirical_observability_gramians saw no gradient at some layer: pass non-empty "
            "batches whose loss depends on the adapter."
        )
    return {n: sums[n] / counts[n] for n in layers}
