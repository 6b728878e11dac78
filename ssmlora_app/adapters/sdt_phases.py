"""SDT's training phases and what the Mamba-1 and Mamba-2 deltas share (the SDLoRA paper's
selective dimension tuning).

Every SSM-delta module is a weight re-parametrisation (``torch.nn.utils.parametrize``) with a
``phase`` buffer, saved with the adapter:

* ``IDLE`` (just injected): θ trainable, indices are placeholders, θ = 0 so the model equals the
  frozen one. The trainable count here is the budget of the training phase, since the sizes are
  fixed by the freeze ratios.
* ``WARMUP``: a dense ``ΔA_log`` and LoRA are trained, θ frozen (:func:`start_warmup`).
* ``SELECTED``: the dimensions are chosen (:mod:`ssmlora_app.adapters.sdt_select`), θ trainable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ssmlora_app.adapters.base import AdapterLayer
from ssmlora_app.adapters.lora import LoRAWeight
from ssmlora_app.adapters.mamba_targets import MIXER_KINDS, mixer_kind  # noqa: F401  (re-exported)
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import NO_DECAY_ATTR

IDLE, WARMUP, SELECTED = 0, 1, 2
"""Values of the ``phase`` buffer of the SSM-delta modules."""


def kept(total: int, freeze: float) -> int:
    """How many of ``total`` dimensions a freeze ratio leaves trainable: ``total − round(freeze ·
    total)``, as the SDLoRA reference code computes it (so the paper's configs give the paper's
    budgets: ``state_freeze`` 0.9 keeps 2 of 16 states; ``channel_freeze`` 0.99 keeps 15, 31 and
    41 of 1536, 3072 and 4096 channels), at least 1. ``round`` is Python's (halves to even), as
    in the reference."""
    return max(1, min(total, total - round(freeze * total)))


def no_decay(p: nn.Parameter) -> nn.Parameter:
    """Mark ``p`` as exempt from weight decay (see :mod:`ssmlora_app.optim`)."""
    setattr(p, NO_DECAY_ATTR, True)
    return p


class PhasedDelta(AdapterLayer):
    """An SSM-delta parametrization ``t ↦ t + delta()`` with a ``phase`` buffer that sets which
    of its tensors train (:meth:`apply_phase`)."""

    resizable = ("dense",)  # (D, N) while warming up, (0,) otherwise

    def __init__(self, owner: nn.Module, name: str, device: torch.device):
        super().__init__()
        object.__setattr__(self, "_owner", (owner, name))  # for merge; not a submodule
        self.register_buffer("phase", torch.tensor(IDLE, device=device))
        self._phase = IDLE
        self.merged = False

    def delta(self) -> Tensor:
        """The update of the parametrised tensor, its shape, fp32."""
        raise NotImplementedError

    def apply_phase(self) -> None:
        raise NotImplementedError

    def forward(self, tensor: Tensor) -> Tensor:
        return tensor if self.merged else tensor + self.delta().to(tensor.dtype)

    def _original(self) -> Tensor:
        owner, name = self._owner
        return owner.parametrizations[name].original

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            original = self._original()
            original += self.delta().to(original.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            original = self._original()
            original -= self.delta().to(original.dtype)
            self.merged = False

    def set_phase(self, phase: int) -> None:
        self.phase.fill_(phase)
        self._phase = phase
        self.apply_phase()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        dense = state_dict.get(prefix + "dense")
        own = getattr(self, "dense", None)
        if dense is not None and own is not None and dense.shape != own.shape:
            # the warm-up delta exists only while warming up
            self.dense = nn.Parameter(self.dense.new_zeros(dense.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._phase = int(self.phase)
        self.apply_phase()


def phased_delta(owner: nn.Module, name: str) -> PhasedDelta | None:
    """The SSM delta re-parametrising ``owner.<name>``, if any."""
    if parametrize.is_parametrized(owner, name):
        for p in owner.parametrizations[name]:
            if isinstance(p, PhasedDelta):
                return p
    return None


def out_proj_lora(mixer: nn.Module) -> LoRAWeight:
    """The LoRA re-parametrising ``mixer.out_proj.weight`` (whose columns ``num_zero`` prunes)."""
    if parametrize.is_parametrized(mixer.out_proj, "weight"):
        for p in mixer.out_proj.parametrizations["weight"]:
            if isinstance(p, LoRAWeight):
                return p
    raise SsmloraError("num_zero needs LoRA on out_proj (add it to target_modules).")


def sdt_modules(model: nn.Module) -> list[PhasedDelta]:
    """Every SSM-delta parametrization of ``model``, in model order."""
    return [m for m in model.modules() if isinstance(m, PhasedDelta)]


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


def lowest(scores: Tensor, excluded: Tensor, count: int) -> Tensor:
    """The ``count`` lowest-scoring indices of ``scores (n,)`` outside ``excluded``, ascending
    (SDT's ``num_zero`` pruning)."""
    rest = torch.ones_like(scores, dtype=torch.bool).index_fill(0, excluded, False)
    candidates = rest.nonzero().squeeze(1)
    return candidates[select_top(-scores[candidates], min(count, candidates.numel()))]


@dataclass
class LayerSelection:
    """What the selection chose in one mixer."""

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
