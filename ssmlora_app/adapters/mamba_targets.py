"""What the Mamba methods adapt: the mixers of a model and the named *parts* of their weights.

Hugging Face keeps each Mamba projection fused in one ``nn.Linear``; the PEFT-of-SSMs benchmark
(Galim et al. 2025, arXiv 2410.09016, its repository's ``in_proj_x`` / ``x_proj_B`` targets)
adapts the pieces separately. A *part* is a row block of one tensor of the mixer:

Mamba-1 (HF ``MambaMixer``: ``D`` channels, ``N`` states, Δ rank ``R``)::

    in_proj   (2D, D_m)   rows [x (D) | z (D)]         parts in_proj_x, in_proj_z
    x_proj    (R+2N, D)   rows [Δ (R) | B (N) | C (N)]  parts x_proj_dt, x_proj_B, x_proj_C
    dt_proj   (D, R), out_proj (D_m, D), conv1d (D, 1, k)

Mamba-2 (HF ``Mamba2Mixer``: ``I`` channels in ``H`` heads, ``G`` groups of ``N`` states)::

    in_proj   (2I+2GN+H, D_m)  rows [z (I) | x (I) | B (GN) | C (GN) | Δ (H)]
              parts in_proj_z, in_proj_x, in_proj_B, in_proj_C, in_proj_dt
    out_proj  (D_m, I), conv1d (I+2GN, 1, k)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.targets import layer_index, name_matches, under
from ssmlora_app.errors import SsmloraError

MIXER_KINDS = {"MambaMixer": "mamba", "Mamba2Mixer": "mamba2"}
"""HF mixer class -> ``mamba`` (Mamba-1) or ``mamba2``."""


def mixer_kind(module: nn.Module) -> str | None:
    """``"mamba"`` for a Mamba-1 mixer, ``"mamba2"`` for a Mamba-2 one, else None."""
    return MIXER_KINDS.get(type(module).__name__.removeprefix("Parametrized"))


def find_mixers(
    model: nn.Module, config: AdapterConfig, skip: Sequence[str] = ()
) -> list[tuple[str, nn.Module]]:
    """The Mamba-1 / Mamba-2 mixers of ``model`` that ``config`` selects (its
    ``layers_to_transform``/``layers_pattern``/``exclude_modules``), in model order."""
    mixers = []
    for name, module in model.named_modules():
        if mixer_kind(module) is None or under(name, skip):
            continue
        if config.exclude_modules is not None and name_matches(name, config.exclude_modules):
            continue
        if config.layers_to_transform is not None:
            index = layer_index(name + ".", config.layers_pattern)
            if index is None or index not in config.layers_to_transform:
                continue
        mixers.append((name, module))
    return mixers


def require_mixers(
    model: nn.Module, config: AdapterConfig, skip: Sequence[str], method: str
) -> list[tuple[str, nn.Module]]:
    """:func:`find_mixers`, or one clear error when the model has none to adapt."""
    mixers = find_mixers(model, config, skip)
    if not mixers:
        raise SsmloraError(
            f"{method} adapts Mamba mixers (MambaMixer or Mamba2Mixer); {type(model).__name__} "
            "has none (or layers_to_transform/exclude_modules leave none). Use a mamba or "
            "mamba2 backbone."
        )
    return mixers


def needs_mamba(model: nn.Module, method: str) -> None:
    """Raise :class:`SsmloraError` when ``model`` has no Mamba mixer (a method's ``bench`` hook
    on another backbone)."""
    if not any(mixer_kind(m) for m in model.modules()):
        raise SsmloraError(f"{method} needs a Mamba backbone")


@dataclass(frozen=True)
class Part:
    """A row block of one tensor of a mixer."""

    module: str
    """The mixer's submodule holding the tensor (``in_proj``, ``conv1d``, ...)."""
    start: int
    """First row."""
    stop: int
    """One past the last row."""


def mixer_parts(mixer: nn.Module) -> dict[str, Part]:
    """Part name -> :class:`Part` of one Mamba-1 or Mamba-2 mixer (whole projections included)."""
    whole = {
        name: Part(name, 0, getattr(mixer, name).weight.shape[0])
        for name in ("in_proj", "x_proj", "dt_proj", "out_proj", "conv1d")
        if hasattr(mixer, name)
    }
    if mixer_kind(mixer) == "mamba":
        d, n, r = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
        return {
            **whole,
            "in_proj_x": Part("in_proj", 0, d),
            "in_proj_z": Part("in_proj", d, 2 * d),
            "x_proj_dt": Part("x_proj", 0, r),
            "x_proj_B": Part("x_proj", r, r + n),
            "x_proj_C": Part("x_proj", r + n, r + 2 * n),
        }
    i, gn, h = mixer.intermediate_size, mixer.n_groups * mixer.ssm_state_size, mixer.num_heads
    blocks = {"in_proj_z": i, "in_proj_x": i, "in_proj_B": gn, "in_proj_C": gn, "in_proj_dt": h}
    start = 0
    for name, size in blocks.items():
        whole[name] = Part("in_proj", start, start + size)
        start += size
    return whole


def parts_of(mixer: nn.Module, names: Sequence[str], method: str) -> dict[str, Part]:
    """The parts ``names`` of ``mixer``, or one error naming the parts it has."""
    known = mixer_parts(mixer)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SsmloraError(
            f"{method}: {type(mixer).__name__} has no part {unknown}; its parts: {sorted(known)}."
        )
    return {n: known[n] for n in names}
