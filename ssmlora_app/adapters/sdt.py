"""SDT / SDLoRA (Galim et al. 2025, arXiv 2410.09016, spec §3): LoRA on Mamba's projections plus
sparse updates of selected channels and states of the SSM parameters.

Mamba-1 mixer (HF ``MambaMixer``), per layer, with ``D`` channels and ``N`` states::

    A_log' = A_log + scatter(M_A, θ_A)                 θ_A (k_c, k_s)     selected channels × states
    x_proj'[B rows] = x_proj[B rows] + scatter(θ_B)    θ_B (N, k_c)       all N states, k_c columns
    x_proj'[C rows] = x_proj[C rows] + scatter(θ_C)    θ_C (N, k_c)
    out_proj' = out_proj + (alpha/r) · B_lora A_lora                      (any ``target_modules``)

with ``k_c = ⌊(1 − channel_freeze)·D⌋`` and ``k_s = ⌊(1 − state_freeze)·N⌋`` (at least 1 each).
Mamba-130M (D 1536, N 16, 24 layers, r 8 on out_proj): 15·4 + 2·16·15 + 8·(1536+768) = 18,972 per
layer, 455,328 in all.

**Every update is a weight re-parametrisation** (``torch.nn.utils.parametrize``): ``.weight`` /
``.A_log`` of the adapted module *is* ``W0 + ΔW``, so HF's fused CUDA path, which passes
``x_proj.weight``, ``out_proj.weight`` and ``A_log`` straight into ``mamba_inner_fn``, and its
pure-PyTorch path both see the adapted weights. The frozen tensor stays at
``<module>.parametrizations.<name>.original``; the parametrization modules are
:class:`AdapterLayer` subclasses without a ``base_layer``, so ``adapter_state_dict`` collects
exactly their tensors (LoRA factors, θ, masks, phase) and never the frozen one.

**Phases** (a ``phase`` buffer in every SSM-delta module, saved with the adapter):

* ``IDLE`` (just injected): θ trainable, indices are placeholders, θ = 0 so the model equals the
  frozen one. :func:`~ssmlora_app.adapters.count_trainable_parameters` reports the budget of the
  training phase here (455,328 above), since the sizes are fixed by the ratios.
* ``WARMUP``: a dense ``ΔA_log (D, N)`` and LoRA are trained, θ frozen (:func:`start_warmup`).
* ``SELECTED``: :func:`select_dimensions` scored ``I = ΔA_log²``, kept the top channels by
  ``Σ_n I[d, n]`` then the top states within each, dropped ``ΔA_log`` and re-initialised LoRA
  (the warm-up's updates are discarded, the backbone is back to its pretrained weights), and θ is
  trainable. The head keeps its warm-up training: it is not a pretrained weight.

**Mamba-2** (HF ``Mamba2Mixer``, ``H`` heads of ``P`` channels, ``G`` groups, ``N`` states): ``A``
is one scalar per head, so *heads* play the role of channels. The warm-up trains a dense
``ΔA_log (H,)``; heads are scored by ``ΔA_log²`` and the top ``k_h = ⌊(1 − channel_freeze)·H⌋``
(≥ 1, ties to the lower index) are kept. ``sparse_targets`` keep their names, applied to the
tensors that play those roles::

    "A_log":  A_log' = A_log + scatter(heads, θ_A),  dt_bias', D' likewise   θ (k_h,) each
    "x_proj": in_proj'[B rows of g] += θ_B[g], in_proj'[C rows of g] += θ_C[g]  θ (k_g, N, D_m)

B and C are shared by the ``H/G`` heads of a group, so their rows cannot follow single heads:
groups are scored by the sum of their heads' scores and the top ``k_g = ⌊(1 − channel_freeze)·G⌋``
(≥ 1) groups get deltas on all ``N`` states of their B and C rows (the input columns are the
model dimension ``D_m``; there is no channel to select). Fixed sizes keep the budget known before
the warm-up and the state dict loadable. With ``G = 1`` (e.g. mamba2-130m) that is every B/C row,
``2·N·D_m`` per layer; ``sparse_targets: [A_log]`` leaves B/C frozen. ``state_freeze`` has no
Mamba-2 counterpart (A has no state axis) and is ignored there; ``num_zero`` prunes the
lowest-scoring heads' ``P`` columns of ``out_proj``.

The callback :class:`~ssmlora_app.callbacks.SDTSelection` drives the phases inside one ``fit``.
LoRA dropout cannot be expressed as a weight re-parametrisation (there is no input to drop, and
the fused kernels read the weight directly), so SDT's LoRA has none (the paper used 0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.targets import _under, find_config_targets, layer_index, name_matches
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import NO_DECAY_ATTR

IDLE, WARMUP, SELECTED = 0, 1, 2
"""Values of the ``phase`` buffer of the SSM-delta modules."""

SPARSE_TARGETS = ("A_log", "x_proj")
"""SSM tensors that can get sparse deltas: ``A_log`` and the B/C rows of ``x_proj`` (Mamba-2:
heads of ``A_log``/``dt_bias``/``D``, and the B/C rows of ``in_proj``)."""


@dataclass
class SDTConfig(AdapterConfig):
    """SDLoRA on Mamba: LoRA on projections + sparse deltas on selected SSM dimensions (spec §3)."""

    adapter_type: ClassVar[str] = "sdt"

    target_modules: str | list[str] | None = field(default_factory=lambda: ["out_proj"])
    """Linear projections that get LoRA (see :class:`AdapterConfig`); default the mixers'
    ``out_proj``. ``[]`` for none (sparse deltas only)."""

    r: int = 8
    """LoRA rank."""

    alpha: float = 8.0
    """LoRA scale numerator: the update is multiplied by ``alpha/r``."""

    dropout: float = 0.0
    """LoRA input dropout. Must be 0: a weight re-parametrisation has no input to drop."""

    channel_freeze: float = 0.99
    """Fraction of each layer's channels left frozen; ``⌊(1 − channel_freeze)·D⌋`` (≥ 1) are
    selected (paper: 0.99, i.e. 1%). Mamba-2: the fraction of heads (and of B/C groups) left
    frozen."""

    state_freeze: float = 0.75
    """Fraction of the states of a selected channel left frozen in ``A_log``; the top
    ``⌊(1 − state_freeze)·N⌋`` (≥ 1) are trained (paper: 0.75 / 0.9 / 0.95). Unused on
    Mamba-2 (its A has no state axis)."""

    warmup_steps: int = 20
    """Optimizer steps of dense-``ΔA_log`` warm-up before the dimensions are selected (they count
    towards the trainer's ``max_steps``/``max_epochs``)."""

    sparse_targets: list[str] = field(default_factory=lambda: list(SPARSE_TARGETS))
    """Which SSM tensors get sparse deltas: ``A_log`` and/or ``x_proj`` (its B and C rows).
    ``[]``: plain LoRA through the same re-parametrisation (no warm-up). Mamba-2: ``A_log``
    adapts the selected heads of ``A_log``, ``dt_bias`` and ``D``; ``x_proj`` the B/C rows of
    ``in_proj`` of the selected groups."""

    num_zero: int = 0
    """Dimension pruning: per layer, the ``num_zero`` lowest-scoring channels are removed from
    the mixer's output (their ``out_proj`` column is masked to 0). Needs ``out_proj`` in
    ``target_modules``."""

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise SsmloraError(f"SDT LoRA rank r must be a positive integer, got r={self.r!r}.")
        if self.dropout != 0.0:
            raise SsmloraError(
                f"SDTConfig.dropout={self.dropout}: LoRA here is a weight re-parametrisation (so "
                "the fused Mamba kernels see it) and has no input to drop; set dropout: 0."
            )
        for name in ("channel_freeze", "state_freeze"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise SsmloraError(f"SDTConfig.{name} must be in [0, 1), got {value}.")
        unknown = sorted(set(self.sparse_targets) - set(SPARSE_TARGETS))
        if unknown:
            raise SsmloraError(
                f"SDTConfig.sparse_targets has {unknown}; choose from {list(SPARSE_TARGETS)}."
            )
        if self.sparse_targets and (
            not isinstance(self.warmup_steps, int) or self.warmup_steps < 1
        ):
            raise SsmloraError(
                f"SDTConfig.warmup_steps={self.warmup_steps!r}: the selection scores the change "
                "of A_log over the warm-up, so it needs at least 1 step."
            )
        if self.num_zero < 0:
            raise SsmloraError(f"SDTConfig.num_zero must be ≥ 0, got {self.num_zero}.")
        if not self.target_modules and not self.sparse_targets:
            raise SsmloraError("SDTConfig adapts nothing: give target_modules or sparse_targets.")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def kept(total: int, freeze: float) -> int:
    """How many of ``total`` dimensions a freeze ratio leaves trainable: ``⌊(1−freeze)·total⌋``,
    at least 1 (the epsilon absorbs float error, e.g. ``0.01·1536 = 15.360000000000014``)."""
    return max(1, min(total, math.floor((1.0 - freeze) * total + 1e-9)))


def _original(owner: nn.Module, name: str) -> Tensor:
    return owner.parametrizations[name].original


class LoRAWeight(AdapterLayer):
    """Parametrization ``W ↦ W + (alpha/r)·B·A`` of a linear weight ``(d_out, d_in)``.

    ``lora_A (r, d_in)`` kaiming-uniform (a=√5), ``lora_B (d_out, r)`` zeros, both fp32; the
    update is cast to the weight's dtype. ``pruned`` (a buffer of input columns, see
    ``SDTConfig.num_zero``) is masked to 0 in the effective weight.
    """

    def __init__(self, owner: nn.Module, r: int, alpha: float):
        super().__init__()
        d_out, d_in = owner.weight.shape
        device = owner.weight.device
        object.__setattr__(self, "_owner", owner)  # not a submodule: no cycle in modules()
        self.lora_A = nn.Parameter(torch.empty(r, d_in, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, device=device, dtype=torch.float32))
        self.register_buffer("pruned", torch.zeros(0, dtype=torch.long, device=device))
        self.scaling = alpha / r
        self.merged = False
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        pruned = state_dict.get(prefix + "pruned")
        if pruned is not None and pruned.shape != self.pruned.shape:  # set by the selection
            self.pruned = self.pruned.new_zeros(pruned.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> Tensor:
        """``(alpha/r)·B·A``, ``(d_out, d_in)``, fp32."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, weight: Tensor) -> Tensor:
        if not self.merged:
            weight = weight + self.delta_weight().to(weight.dtype)
        if self.pruned.numel():
            weight = weight.index_fill(1, self.pruned, 0.0)
        return weight

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            original = _original(self._owner, "weight")
            original += self.delta_weight().to(original.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            original = _original(self._owner, "weight")
            original -= self.delta_weight().to(original.dtype)
            self.merged = False


class _Phased(AdapterLayer):
    """An SSM-delta parametrization with a ``phase`` buffer that sets which tensors train."""

    def __init__(self, owner: nn.Module, name: str, device: torch.device):
        super().__init__()
        object.__setattr__(self, "_owner", (owner, name))  # for merge; not a submodule
        self.register_buffer("phase", torch.tensor(IDLE, device=device))
        self._phase = IDLE
        self.merged = False

    def delta(self) -> Tensor:
        """The update of the parametrised tensor, its shape, fp32."""
        raise NotImplementedError

    def forward(self, tensor: Tensor) -> Tensor:
        return tensor if self.merged else tensor + self.delta().to(tensor.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            original = _original(*self._owner)
            original += self.delta().to(original.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            original = _original(*self._owner)
            original -= self.delta().to(original.dtype)
            self.merged = False

    def set_phase(self, phase: int) -> None:
        self.phase.fill_(phase)
        self._phase = phase
        self.apply_phase()

    def apply_phase(self) -> None:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        dense = state_dict.get(prefix + "dense")
        own = getattr(self, "dense", None)
        if dense is not None and own is not None and dense.shape != own.shape:
            # the warm-up delta exists only while warming up
            self.dense = nn.Parameter(self.dense.new_zeros(dense.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._phase = int(self.phase)
        self.apply_phase()


def _no_decay(p: nn.Parameter) -> nn.Parameter:
    setattr(p, NO_DECAY_ATTR, True)
    return p


class SparseALog(_Phased):
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
        self.theta = _no_decay(nn.Parameter(torch.zeros(k_c, k_s, device=device)))
        self.dense = _no_decay(nn.Parameter(torch.zeros(0, device=device)))
        self.apply_phase()

    def apply_phase(self) -> None:
        warm = self._phase == WARMUP
        if warm != (self.dense.numel() > 0):
            shape = self.shape if warm else (0,)
            self.dense = _no_decay(nn.Parameter(self.theta.new_zeros(shape)))
        self.dense.requires_grad_(warm)
        self.theta.requires_grad_(not warm)

    def delta(self) -> Tensor:
        """The update of ``A_log``, ``(D, N)`` fp32."""
        if self._phase == WARMUP:
            return self.dense
        zeros = self.theta.new_zeros(self.shape)
        return zeros.index_put((self.channels[:, None], self.states), self.theta)


class SparseBC(_Phased):
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
        self.theta_B = _no_decay(nn.Parameter(torch.zeros(n, k_c, device=device)))
        self.theta_C = _no_decay(nn.Parameter(torch.zeros(n, k_c, device=device)))
        self.apply_phase()

    def apply_phase(self) -> None:
        for p in (self.theta_B, self.theta_C):
            p.requires_grad_(self._phase != WARMUP)

    def delta(self) -> Tensor:
        rows = torch.arange(self.dt_rank, self.dt_rank + 2 * self.n, device=self.theta_B.device)
        theta = torch.cat([self.theta_B, self.theta_C])  # (2N, k_c)
        return theta.new_zeros(self.shape).index_put((rows[:, None], self.channels[None, :]), theta)


class SparseHeads(_Phased):
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
        self.theta = _no_decay(nn.Parameter(torch.zeros(k_h, device=device)))
        if warm:
            self.dense = _no_decay(nn.Parameter(torch.zeros(0, device=device)))
        self.apply_phase()

    def apply_phase(self) -> None:
        warm = self._phase == WARMUP
        if self.warm:
            if warm != (self.dense.numel() > 0):
                shape = self.shape if warm else (0,)
                self.dense = _no_decay(nn.Parameter(self.theta.new_zeros(shape)))
            self.dense.requires_grad_(warm)
        self.theta.requires_grad_(not warm)

    def delta(self) -> Tensor:
        """The update of the vector, ``(H,)`` fp32."""
        if self.warm and self._phase == WARMUP:
            return self.dense
        return self.theta.new_zeros(self.shape).index_put((self.heads,), self.theta)


class SparseGroupBC(_Phased):
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
        self.theta_B = _no_decay(nn.Parameter(torch.zeros(k_g, n, d_m, device=device)))
        self.theta_C = _no_decay(nn.Parameter(torch.zeros(k_g, n, d_m, device=device)))
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


MAMBA2_HEAD_TENSORS = ("A_log", "dt_bias", "D")
"""The per-head tensors of a Mamba-2 mixer that the ``A_log`` sparse target adapts."""


def _mixer_kind(module: nn.Module) -> str | None:
    """``"mamba"`` for a Mamba-1 mixer, ``"mamba2"`` for a Mamba-2 one, else None."""
    name = type(module).__name__.removeprefix("Parametrized")
    return {"MambaMixer": "mamba", "Mamba2Mixer": "mamba2"}.get(name)


def _is_mamba_mixer(module: nn.Module) -> bool:
    return _mixer_kind(module) is not None


def find_mixers(
    model: nn.Module, config: SDTConfig, skip: list[str] | tuple = ()
) -> list[tuple[str, nn.Module]]:
    """The Mamba-1 / Mamba-2 mixers that get sparse deltas (honouring ``layers_to_transform``)."""
    mixers = []
    for name, module in model.named_modules():
        if not _is_mamba_mixer(module) or _under(name, skip):
            continue
        if config.exclude_modules is not None and name_matches(name, config.exclude_modules):
            continue
        if config.layers_to_transform is not None:
            index = layer_index(name + ".", config.layers_pattern)
            if index is None or index not in config.layers_to_transform:
                continue
        mixers.append((name, module))
    return mixers


def inject_sdt(model: nn.Module, config: SDTConfig, skip: list[str]) -> list[str]:
    """Register LoRA on the target projections and the sparse deltas on every Mamba mixer's
    ``A_log`` / ``x_proj`` (phase ``IDLE``); returns the adapted module names."""
    names = []
    if config.sparse_targets:
        mixers = find_mixers(model, config, skip)
        if not mixers:
            kinds = sorted({type(m).__name__ for m in model.modules() if hasattr(m, "A_log")})
            raise SsmloraError(
                "SDT's sparse deltas need Mamba mixers (MambaMixer or Mamba2Mixer); "
                f"{type(model).__name__} "
                f"has none{f' (found {kinds})' if kinds else ''}. Use a mamba backbone, or "
                "sparse_targets: [] for plain LoRA."
            )
        for name, mixer in mixers:
            if _mixer_kind(mixer) == "mamba2":
                names += _inject_mamba2(name, mixer, config)
                continue
            d, n = mixer.A_log.shape
            k_c, k_s = kept(d, config.channel_freeze), kept(n, config.state_freeze)
            if "A_log" in config.sparse_targets:
                parametrize.register_parametrization(mixer, "A_log", SparseALog(mixer, k_c, k_s))
                names.append(f"{name}.A_log")
            if "x_proj" in config.sparse_targets:
                bc = SparseBC(mixer.x_proj, mixer.time_step_rank, n, k_c)
                parametrize.register_parametrization(mixer.x_proj, "weight", bc)
                names.append(f"{name}.x_proj")
    if config.target_modules:
        targets = find_config_targets(model, config, skip, types=(nn.Linear,))
        for name in targets:
            linear = model.get_submodule(name)
            lora = LoRAWeight(linear, config.r, config.alpha)
            parametrize.register_parametrization(linear, "weight", lora)
            names.append(name)
    if config.num_zero and not any(n.endswith("out_proj") for n in names):
        raise SsmloraError("SDTConfig.num_zero prunes out_proj columns: add out_proj to targets.")
    return names


def _inject_mamba2(name: str, mixer: nn.Module, config: SDTConfig) -> list[str]:
    """Per-head deltas (``A_log`` target) and B/C-row deltas of ``in_proj`` (``x_proj`` target)
    on one ``Mamba2Mixer``; returns the adapted tensor names."""
    k_h = kept(mixer.num_heads, config.channel_freeze)
    k_g = kept(mixer.n_groups, config.channel_freeze)
    names = []
    if "A_log" in config.sparse_targets:
        for tensor in MAMBA2_HEAD_TENSORS:
            heads = SparseHeads(mixer, tensor, k_h, warm=tensor == "A_log")
            parametrize.register_parametrization(mixer, tensor, heads)
            names.append(f"{name}.{tensor}")
    if "x_proj" in config.sparse_targets:
        bc = SparseGroupBC(
            mixer.in_proj, mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size, k_g
        )
        parametrize.register_parametrization(mixer.in_proj, "weight", bc)
        names.append(f"{name}.in_proj")
    return names


def sdt_modules(model: nn.Module) -> list[_Phased]:
    """Every SSM-delta parametrization of ``model``, in model order."""
    return [m for m in model.modules() if isinstance(m, _Phased)]


def sdt_phase(model: nn.Module) -> int | None:
    """The common phase of ``model``'s SSM deltas, or None if it has none."""
    phases = {m._phase for m in sdt_modules(model)}
    if not phases:
        return None
    if len(phases) > 1:
        raise SsmloraError(f"SDT layers disagree on their phase ({sorted(phases)}).")
    return phases.pop()


def start_warmup(model: nn.Module) -> None:
    """Enter the warm-up: a dense ``ΔA_log`` (zeros) trains with LoRA, θ is frozen."""
    for module in sdt_modules(model):
        module.set_phase(WARMUP)


def select_top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest entries of the last dimension of ``scores``; ties go to the
    lower index (a stable descending sort); returned in ascending order."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return order.sort(dim=-1).values


@dataclass
class LayerSelection:
    """What :func:`select_dimensions` chose in one mixer."""

    channels: Tensor
    """Selected channels ``(k_c,)``, ascending."""
    states: Tensor
    """Selected states per selected channel ``(k_c, k_s)``, ascending."""
    channel_scores: Tensor
    """``s_d = Σ_n ΔA_log[d, n]²`` of every channel ``(D,)``."""
    pruned: Tensor
    """Channels removed by ``num_zero`` (lowest scores), ascending (Mamba-2: heads)."""
    groups: Tensor | None = None
    """Mamba-2 only: the groups whose B/C rows get deltas ``(k_g,)``, ascending. There,
    ``channels`` are the selected heads ``(k_h,)``, ``states`` is empty ``(k_h, 0)`` and
    ``channel_scores`` are the head scores ``ΔA_log[h]²`` ``(H,)``."""

    def describe(self) -> str:
        """One line for the log: the selected channels and states (Mamba-2: heads, groups)."""
        if self.groups is not None:
            text = f"heads {self.channels.tolist()}, groups {self.groups.tolist()}"
        else:
            text = f"channels {self.channels.tolist()}, states {self.states.tolist()}"
        return text + (f", pruned {self.pruned.tolist()}" if self.pruned.numel() else "")


@torch.no_grad()
def select_dimensions(model: nn.Module, num_zero: int | None = None) -> dict[str, LayerSelection]:
    """End the warm-up (spec §3): score ``I = ΔA_log²``, keep the top channels by ``Σ_n I``, then
    the top states within each kept channel, write the masks, drop ``ΔA_log``, re-initialise
    LoRA and enter ``SELECTED``. ``num_zero`` defaults to the injected config's. Returns the
    selection per mixer name."""
    if num_zero is None:
        num_zero = getattr(getattr(model, "ssmlora_config", None), "num_zero", 0)
    selection = {}
    for name, mixer in model.named_modules():
        if not _is_mamba_mixer(mixer):
            continue
        if _mixer_kind(mixer) == "mamba2":
            chosen = _select_mamba2(name, mixer, num_zero)
            if chosen is not None:
                selection[name] = chosen
            continue
        a_log = _sparse(mixer, "A_log")
        bc = _sparse(mixer.x_proj, "weight")
        if a_log is None and bc is None:
            continue
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
            rest = torch.ones_like(channel_scores, dtype=torch.bool).index_fill(0, channels, False)
            candidates = rest.nonzero().squeeze(1)
            pruned = select_top(-channel_scores[candidates], min(num_zero, candidates.numel()))
            pruned = candidates[pruned]
            out = _lora(mixer.out_proj)
            out.pruned = pruned.to(out.pruned.device)
        a_log.channels.copy_(channels)
        a_log.states.copy_(states)
        if bc is not None:
            bc.channels.copy_(channels)
        selection[name] = LayerSelection(channels, states, channel_scores.float(), pruned)
    for module in model.modules():
        if isinstance(module, LoRAWeight):
            module.reset_parameters()
    for module in sdt_modules(model):
        module.set_phase(SELECTED)
    return selection


def _select_mamba2(name: str, mixer: nn.Module, num_zero: int) -> LayerSelection | None:
    """Heads by ``ΔA_log[h]²``, groups by the sum of their heads' scores; writes the masks."""
    heads_deltas = [_sparse(mixer, t) for t in MAMBA2_HEAD_TENSORS]
    bc = _sparse(mixer.in_proj, "weight")
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
        rest = torch.ones_like(scores, dtype=torch.bool).index_fill(0, heads, False)
        candidates = rest.nonzero().squeeze(1)
        pruned = candidates[select_top(-scores[candidates], min(num_zero, candidates.numel()))]
        columns = pruned[:, None] * mixer.head_dim + torch.arange(
            mixer.head_dim, device=heads.device
        )
        out = _lora(mixer.out_proj)
        out.pruned = columns.reshape(-1).to(out.pruned.device)
    for module in heads_deltas:
        if module is not None:
            module.heads.copy_(heads)
    if bc is not None:
        bc.groups.copy_(groups)
    empty = torch.zeros(heads.numel(), 0, dtype=torch.long, device=heads.device)
    return LayerSelection(heads, empty, scores.float(), pruned, groups=groups)


def _sparse(owner: nn.Module, name: str) -> _Phased | None:
    if parametrize.is_parametrized(owner, name):
        for p in owner.parametrizations[name]:
            if isinstance(p, _Phased):
                return p
    return None


def _lora(owner: nn.Module) -> LoRAWeight:
    if parametrize.is_parametrized(owner, "weight"):
        for p in owner.parametrizations["weight"]:
            if isinstance(p, LoRAWeight):
                return p
    raise SsmloraError("num_zero needs LoRA on out_proj (add it to target_modules).")
