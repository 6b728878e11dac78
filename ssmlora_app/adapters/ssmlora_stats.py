"""SSMLoRA diagnostics: per-chain state norms and the spectral radius of ``I + W_c``.

The chain's recurrence ``h_l = h_{l−1}(I + W_c) + u_l W_d`` is stable along depth when the
spectral radius ``ρ(I + W_c)`` stays near or below 1; with ``norm: none`` a radius well above 1
lets the state grow geometrically with depth. ``ρ = 1`` at init (``W_c = 0``).
"""

from __future__ import annotations

import torch
from torch import nn

from ssmlora_app.adapters.ssmlora import SSMLoRALinear
from ssmlora_app.errors import SsmloraError


def spectral_radius(layer: SSMLoRALinear) -> float:
    """``max |eig(I + W_c)|`` of one module, in float64."""
    w_c = layer.W_c.detach().to("cpu", torch.float64)
    eigenvalues = torch.linalg.eigvals(torch.eye(w_c.shape[0], dtype=torch.float64) + w_c)
    return float(eigenvalues.abs().max())


@torch.no_grad()
def ssmlora_diagnostics(model: nn.Module) -> dict[str, float]:
    """Per chain: ``ssmlora/<chain>/spectral_radius`` (max over the chain's modules of
    ``ρ(I + W_c)``) and, when a forward has run, ``ssmlora/<chain>/state_norm``: the L2 norm over
    r of the state each position passed on in the last forward, averaged over positions,
    examples and tokens (padding included)."""
    layers = [m for m in model.modules() if isinstance(m, SSMLoRALinear)]
    if not layers:
        raise SsmloraError("ssmlora_diagnostics needs a model with SSMLoRA injected.")
    radius: dict[str, float] = {}
    norms: dict[str, list[float]] = {}
    for layer in layers:
        radius[layer.chain] = max(radius.get(layer.chain, 0.0), spectral_radius(layer))
        state = layer.state_chain.states.get((layer.chain, layer.position))
        if state is not None:
            norms.setdefault(layer.chain, []).append(float(state.float().norm(dim=-1).mean()))
    metrics = {f"ssmlora/{chain}/spectral_radius": value for chain, value in radius.items()}
    for chain, values in norms.items():
        metrics[f"ssmlora/{chain}/state_norm"] = sum(values) / len(values)
    return metrics
