"""SDT's sparse deltas on a Mamba-1 mixer (HF ``MambaMixer``, ``D`` channels, ``N`` states)::

    A_log' = A_log + scatter(M_A, θ_A)                 θ_A (k_c, k_s)     selected channels × states
    x_proj'[B rows] = x_proj[B rows] + scatter(θ_B)    θ_B (N, k_c)       all N states, k_c columns
    x_proj'[C rows] = x_proj[C rows] + scatter(θ_C)    θ_C (N, k_c)

(the SDLoRA paper's selective dimension tuning of ``A``, ``B``, ``C``), with
``k_c = D − round(channel_freeze·D)`` and ``k_s = N − round(state_freeze·N)`` (at least 1 each,
as the reference code counts them).
The selection scores ``I = ΔA_log²`` of the warm-up's dense ``ΔA_log``: the top channels by
``Σ_n I[d, n]``, then the top states within each kept channel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ssmlora_app.adapters.sdt_phases import (
    WARMUP,
    LayerSelection,
    PhasedDelta,
    kept,
    lowest,
    no_decay,
    out_proj_lora,
    phased_delta,
    select_top,
)
from ssmlora_app.errors import SsmloraError


class SparseALog(PhasedDelta):
    """Parametrization ``A_log ↦ A_log + scatter(M_A, θ_A)`` of a Mamba-1 ``A_log (D, N)``.

    Buffers: ``channels (k_c,)`` and ``states (k_c, k_s)`` (the mask ``M_A``), ``phase``.
    Parameters: ``theta (k_c, k_s)`` (zeros), and ``dense`` — ``(D, N)`` while warming up,
    ``(0,)`` otherwise — all fp32, without weight decay.
    """

    def __init__(self, mixer: nn.Module, k_c: int, k_s: int):
        a_log = mixer.A_log
        super().__init__(mixer, "A_log", a_log.device)
        self.shape = tuple(a_log.shape)
        device = a_log.device
        self.register_buffer("channels", torch.arange(k_c, device=device))
        self.register_buffer("states", torch.arange(k_s, device=device).repeat(k_c, 1))
        self.theta = no_decay(nn.Parameter(torch.zeros(k_c, k_s, device=device)))
        self.dense = no_decay(nn.Parameter(torch.zeros(0, device=device)))
        self.apply_phase()

    def apply_phase(self) -> None:
        warm = self._phase == WARMUP
        if warm != (self.dense.numel() > 0):
            shape = self.shape if warm else (0,)
            self.dense = no_decay(nn.Parameter(self.theta.new_zeros(shape)))
        self.dense.requires_grad_(warm)
        self.theta.requires_grad_(not warm)

    def delta(self) -> Tensor:
        """The update of ``A_log``, ``(D, N)`` fp32."""
        if self._phase == WARMUP:
            return self.dense
        zeros = self.theta.new_zeros(self.shape)
        return zeros.index_put((self.channels[:, None], self.states), self.theta)


class SparseBC(PhasedDelta):
    """Parametrization of a Mamba-1 ``x_proj.weight (R + 2N, D)`` (rows ``[δ (R), B (N), C (N)]``,
    columns the input channels): ``θ_B``, ``θ_C (N, k_c)`` are added to the B and C rows at the
    selected channels' columns. Frozen while warming up."""

    def __init__(self, x_proj: nn.Linear, dt_rank: int, n: int, k_c: int):
        weight = x_proj.weight
        super().__init__(x_proj, "weight", weight.device)
        self.shape = tuple(weight.shape)
        device = weight.device
        self.dt_rank, self.n = dt_rank, n
        self.register_buffer("channels", torch.arange(k_c, device=device))
        self.theta_B = no_decay(nn.Parameter(torch.zeros(n, k_c, device=device)))
        self.theta_C = no_decay(nn.Parameter(torch.zeros(n, k_c, device=device)))
        self.apply_phase()

    def apply_phase(self) -> None:
        for p in (self.theta_B, self.theta_C):
            p.requires_grad_(self._phase != WARMUP)

    def delta(self) -> Tensor:
        """The update of ``x_proj.weight``, its shape, fp32."""
        rows = torch.arange(self.dt_rank, self.dt_rank + 2 * self.n, device=self.theta_B.device)
        theta = torch.cat([self.theta_B, self.theta_C])  # (2N, k_c)
        return theta.new_zeros(self.shape).index_put((rows[:, None], self.channels[None, :]), theta)


def inject_mamba1(
    name: str,
    mixer: nn.Module,
    sparse_targets: list[str],
    channel_freeze: float,
    state_freeze: float,
) -> list[str]:
    """The ``A_log`` and B/C-row deltas of one ``MambaMixer``; returns the adapted tensor names."""
    d, n = mixer.A_log.shape
    k_c, k_s = kept(d, channel_freeze), kept(n, state_freeze)
    names = []
    if "A_log" in sparse_targets:
        parametrize.register_parametrization(mixer, "A_log", SparseALog(mixer, k_c, k_s))
        names.append(f"{name}.A_log")
    if "x_proj" in sparse_targets:
        bc = SparseBC(mixer.x_proj, mixer.time_step_rank, n, k_c)
        parametrize.register_parametrization(mixer.x_proj, "weight", bc)
        names.append(f"{name}.x_proj")
    return names


def select_mamba1(name: str, mixer: nn.Module, num_zero: int) -> LayerSelection | None:
    """Channels by ``Σ_n ΔA_log²``, states within them by ``ΔA_log²``; writes the masks and, with
    ``num_zero``, the pruned ``out_proj`` columns. None for a mixer without deltas."""
    a_log = phased_delta(mixer, "A_log")
    bc = phased_delta(mixer.x_proj, "weight")
    if a_log is None and bc is None:
        return None
    if a_log is None or a_log._phase != WARMUP:
        raise SsmloraError(
            f"{name}: dimension selection needs the A_log warm-up (sparse_targets with "
            "A_log, and start_warmup before training)."
        )
    scores = a_log.dense.double() ** 2  # (D, N)
    channel_scores = scores.sum(1)
    k_c, k_s = a_log.states.shape
    channels = select_top(channel_scores, k_c)
    states = select_top(scores[channels], k_s)
    pruned = torch.zeros(0, dtype=torch.long, device=channels.device)
    if num_zero:
        pruned = lowest(channel_scores, channels, num_zero)
        out = out_proj_lora(mixer)
        out.pruned = pruned.to(out.pruned.device)
    a_log.channels.copy_(channels)
    a_log.states.copy_(states)
    if bc is not None:
        bc.channels.copy_(channels)
    return LayerSelection(channels, states, channel_scores.float(), pruned)
