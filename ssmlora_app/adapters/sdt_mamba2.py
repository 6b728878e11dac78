"""SDT's sparse deltas on a Mamba-2 mixer (HF ``Mamba2Mixer``: ``H`` heads of ``P`` channels,
``G`` groups, ``N`` states).

``A`` is one scalar per head, so *heads* play the role of Mamba-1's channels. The warm-up trains
a dense ``ΔA_log (H,)``; heads are scored by ``ΔA_log²`` and the top
``k_h = H − round(channel_freeze·H)`` (≥ 1, ties to the lower index) are kept. The sparse targets
keep their Mamba-1 names, applied to the tensors that play those roles::

    "A_log":  A_log' = A_log + scatter(heads, θ_A),  dt_bias', D' likewise   θ (k_h,) each
    "x_proj": in_proj'[B rows of g] += θ_B[g], in_proj'[C rows of g] += θ_C[g]  θ (k_g, N, D_m)

B and C are shared by the ``H/G`` heads of a group, so their rows cannot follow single heads:
groups are scored by the sum of their heads' scores and the top ``k_g = G − round(channel_freeze·G)``
(≥ 1) groups get deltas on all ``N`` states of their B and C rows (the input columns are the
model dimension ``D_m``; there is no channel to select). With ``G = 1`` (e.g. mamba2-130m) that
is every B/C row, ``2·N·D_m`` per layer. ``state_freeze`` has no counterpart (A has no state
axis); ``num_zero`` prunes the lowest-scoring heads' ``P`` columns of ``out_proj``.
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

HEAD_TENSORS = ("A_log", "dt_bias", "D")
"""The per-head tensors of a Mamba-2 mixer that the ``A_log`` sparse target adapts."""


class SparseHeads(PhasedDelta):
    """Parametrization ``v ↦ v + scatter(heads, θ)`` of a Mamba-2 per-head vector ``(H,)``
    (``A_log``, ``dt_bias``, ``D``).

    Buffers: ``heads (k_h,)``, ``phase``. Parameters: ``theta (k_h,)`` (zeros) and, for the
    tensor that is warmed up (``A_log``), ``dense`` — ``(H,)`` while warming up, ``(0,)``
    otherwise. The others are frozen during the warm-up. All fp32, without weight decay.
    """

    def __init__(self, mixer: nn.Module, name: str, k_h: int, warm: bool):
        tensor = getattr(mixer, name)
        super().__init__(mixer, name, tensor.device)
        self.shape = tuple(tensor.shape)
        device = tensor.device
        self.warm = warm
        self.register_buffer("heads", torch.arange(k_h, device=device))
        self.theta = no_decay(nn.Parameter(torch.zeros(k_h, device=device)))
        if warm:
            self.dense = no_decay(nn.Parameter(torch.zeros(0, device=device)))
        self.apply_phase()

    def apply_phase(self) -> None:
        warm = self._phase == WARMUP
        if self.warm:
            if warm != (self.dense.numel() > 0):
                shape = self.shape if warm else (0,)
                self.dense = no_decay(nn.Parameter(self.theta.new_zeros(shape)))
            self.dense.requires_grad_(warm)
        self.theta.requires_grad_(not warm)

    def delta(self) -> Tensor:
        """The update of the vector, ``(H,)`` fp32."""
        if self.warm and self._phase == WARMUP:
            return self.dense
        return self.theta.new_zeros(self.shape).index_put((self.heads,), self.theta)


class SparseGroupBC(PhasedDelta):
    """Parametrization of a Mamba-2 ``in_proj.weight`` (rows ``[z (I), x (I), B (G·N), C (G·N),
    dt (H)]``, columns ``D_m``): ``θ_B``, ``θ_C (k_g, N, D_m)`` are added to the B and C rows of
    the selected ``groups (k_g,)``. Frozen while warming up."""

    def __init__(self, in_proj: nn.Linear, intermediate: int, n_groups: int, n: int, k_g: int):
        weight = in_proj.weight
        super().__init__(in_proj, "weight", weight.device)
        self.shape = tuple(weight.shape)
        device = weight.device
        self.intermediate, self.n_groups, self.n = intermediate, n_groups, n
        self.register_buffer("groups", torch.arange(k_g, device=device))
        d_m = self.shape[1]
        self.theta_B = no_decay(nn.Parameter(torch.zeros(k_g, n, d_m, device=device)))
        self.theta_C = no_decay(nn.Parameter(torch.zeros(k_g, n, d_m, device=device)))
        self.apply_phase()

    def apply_phase(self) -> None:
        for p in (self.theta_B, self.theta_C):
            p.requires_grad_(self._phase != WARMUP)

    def delta(self) -> Tensor:
        """The update of ``in_proj.weight``, its shape, fp32."""
        states = torch.arange(self.n, device=self.groups.device)
        b_rows = 2 * self.intermediate + self.groups[:, None] * self.n + states  # (k_g, N)
        c_rows = b_rows + self.n_groups * self.n
        rows = torch.cat([b_rows, c_rows]).reshape(-1)
        theta = torch.cat([self.theta_B, self.theta_C]).reshape(rows.numel(), -1)
        return theta.new_zeros(self.shape).index_put((rows,), theta)


def inject_mamba2(
    name: str, mixer: nn.Module, sparse_targets: list[str], channel_freeze: float
) -> list[str]:
    """Per-head deltas (``A_log`` target) and B/C-row deltas of ``in_proj`` (``x_proj`` target)
    on one ``Mamba2Mixer``; returns the adapted tensor names."""
    k_h = kept(mixer.num_heads, channel_freeze)
    k_g = kept(mixer.n_groups, channel_freeze)
    names = []
    if "A_log" in sparse_targets:
        for tensor in HEAD_TENSORS:
            heads = SparseHeads(mixer, tensor, k_h, warm=tensor == "A_log")
            parametrize.register_parametrization(mixer, tensor, heads)
            names.append(f"{name}.{tensor}")
    if "x_proj" in sparse_targets:
        bc = SparseGroupBC(
            mixer.in_proj, mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size, k_g
        )
        parametrize.register_parametrization(mixer.in_proj, "weight", bc)
        names.append(f"{name}.in_proj")
    return names


def select_mamba2(name: str, mixer: nn.Module, num_zero: int) -> LayerSelection | None:
    """Heads by ``ΔA_log[h]²``, groups by the sum of their heads' scores; writes the masks and,
    with ``num_zero``, the pruned heads' ``out_proj`` columns. None for a mixer without deltas."""
    heads_deltas = [phased_delta(mixer, t) for t in HEAD_TENSORS]
    bc = phased_delta(mixer.in_proj, "weight")
    if all(m is None for m in heads_deltas) and bc is None:
        return None
    a_log = heads_deltas[0]
    if a_log is None or a_log._phase != WARMUP:
        raise SsmloraError(
            f"{name}: head selection needs the A_log warm-up (sparse_targets with A_log, and "
            "start_warmup before training)."
        )
    scores = a_log.dense.double() ** 2  # (H,)
    heads = select_top(scores, a_log.heads.numel())
    group_scores = scores.view(mixer.n_groups, -1).sum(1)  # heads h·G/H … belong to group g
    k_g = bc.groups.numel() if bc is not None else kept(mixer.n_groups, 0.0)
    groups = select_top(group_scores, k_g)
    pruned = torch.zeros(0, dtype=torch.long, device=heads.device)
    if num_zero:
        pruned = lowest(scores, heads, num_zero)
        columns = pruned[:, None] * mixer.head_dim + torch.arange(
            mixer.head_dim, device=heads.device
        )
        out = out_proj_lora(mixer)
        out.pruned = columns.reshape(-1).to(out.pruned.device)
    for module in heads_deltas:
        if module is not None:
            module.heads.copy_(heads)
    if bc is not None:
        bc.groups.copy_(groups)
    empty = torch.zeros(heads.numel(), 0, dtype=torch.long, device=heads.device)
    return LayerSelection(heads, empty, scores.float(), pruned, groups=groups)
