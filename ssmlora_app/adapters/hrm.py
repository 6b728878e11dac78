"""HRM adapter (Thapliyal 2026, arXiv 2606.26290, spec §4.1): a diagonal LTI SSM beside each MLP.

For a decoder layer with MLP input ``u = LN₂(h)`` (``(B, L, D)``)::

    h ← h + MLP(u) + g · y,    y = SSM(u)                                   (spec §4.1)
    a = −exp(log_A),  Δ = softplus(log_dt),  Ā = exp(Δ ⊙ a) ∈ (0, 1)^d
    B̄ = ((Ā − 1)/a)[:, None] ⊙ B,   s_t = Ā ⊙ s_{t−1} + B̄ u_t,   y_t = C s_t

with ``B (d, D)``, ``C (D, d)``, a scalar gate ``g``: ``2dD + 2d + 1`` parameters per layer, all
fp32. The scan is :func:`ssmlora_app.ssm.lti_scan` (exact chunked or FFT paths, chosen per
length by ``scan: auto``, or the sequential reference).

Insertion is a wrapper module around the MLP (no edit or monkey-patch of ``transformers``): the
wrapper sees exactly the MLP's input, which is ``u``, and adds to the MLP's output, which the
decoder layer adds to the residual. A forward hook could do the same, but hooks are invisible in
``print(model)`` and in ``state_dict`` names, and they do not travel with ``save_adapter``; the
wrapper is an :class:`AdapterLayer` like LoRA's, so saving, loading and counting need nothing new.

* Llama / Mistral: ``model.layers.i.mlp`` (input ``post_attention_layernorm(h)``).
* GPT-2: ``transformer.h.i.mlp`` (input ``ln_2(h)``).
* BERT / RoBERTa (post-LN): the FFN is ``intermediate`` + ``output`` and its input ``u`` is the
  attention block's (already layer-normed) output; ``layer.i.output`` computes
  ``LayerNorm(dropout(dense(·)) + u)``. We wrap ``layer.i.output`` and pass ``u + g·y`` as its
  residual input, so ``h ← LayerNorm(u + FFN(u) + g·y)``: the SSM sits parallel to the FFN
  inside the same residual branch, before the post-LN, as in the pre-LN decoders.

The reduced adapter (:mod:`ssmlora_app.ssm.reduction`) uses :class:`HRMModalLayer`: real and
complex modes ``λ = exp(−exp(log_A) + iθ)``, ``B̂``, ``Ĉ`` stored as real matrices (real parts,
then imaginary parts of the complex modes), and ``y = Re(Ĉ s)``, through the same FFT scan.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.targets import find_config_targets, replace_module
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import NO_DECAY_ATTR
from ssmlora_app.ssm.scan import SCAN_METHODS, lti_scan, lti_step

FFN_PATTERN = r".*\.\d+\.(mlp|output)"
"""Default ``target_modules``: every layer's MLP (``...layers.3.mlp``, ``...h.3.mlp``) or, in
BERT-like models, its FFN output module (``...layer.3.output``, not ``attention.output``)."""


@dataclass
class HRMConfig(AdapterConfig):
    """HRM: a gated diagonal SSM parallel to each MLP (spec §4)."""

    adapter_type: ClassVar[str] = "hrm"

    target_modules: str | list[str] | None = None
    """Modules to wrap (see :class:`AdapterConfig`); None: every layer's MLP (:data:`FFN_PATTERN`).
    Only MLP / BERT-FFN-output modules can be targets."""

    d_state: int = 32
    """State size ``d`` per layer."""

    gate_init: float = 0.01
    """Initial gate ``g`` (the paper: 0.01; 0 makes the injected model equal the frozen one)."""

    dt_min: float = 1e-3
    """Lower end of the log-uniform initial step ``Δ``."""

    dt_max: float = 1e-1
    """Upper end of the log-uniform initial step ``Δ``."""

    scan: str = "auto"
    """``auto`` (the faster exact path for each call's length as measured: on CPU ``chunked``
    from 1024 tokens, ``fft`` below; ``fft`` on other devices until measured), ``chunked`` (decay-matrix products within chunks, the recurrence across
    them), ``fft`` (FFT convolution) or ``sequential`` (the reference recurrence)."""

    train: str = "all"
    """Which adapter parameters train: ``all``, or ``gate`` (only each layer's gate ``g``, e.g.
    after ``ssmlora reduce``; the rest stay as loaded)."""

    modal: bool = False
    """Reduced form written by ``ssmlora reduce``: complex modes, per-layer ``state_sizes``."""

    state_sizes: dict[str, int] | None = None
    """Per-layer state size keyed by module name (the modal form's orders ``d̂``); None: all
    layers use ``d_state``."""

    complex_modes: dict[str, int] | None = None
    """Modal form: number of complex modes (conjugate pairs) per layer, keyed by module name."""

    def validate(self) -> None:
        if not isinstance(self.d_state, int) or self.d_state <= 0:
            raise SsmloraError(f"HRM d_state must be a positive integer, got {self.d_state!r}.")
        if not 0 < self.dt_min <= self.dt_max:
            raise SsmloraError(
                f"HRM needs 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}."
            )
        if self.train not in ("all", "gate"):
            raise SsmloraError(f"HRM train must be 'all' or 'gate', got {self.train!r}.")
        if self.scan not in SCAN_METHODS:
            raise SsmloraError(f"HRM scan must be one of {SCAN_METHODS}, got {self.scan!r}.")
        if self.modal and not self.state_sizes:
            raise SsmloraError(
                "HRMConfig(modal=True) needs state_sizes (written by ssmlora reduce); reduce a "
                "trained HRM adapter instead of writing a modal config by hand."
            )


def inverse_softplus(x: Tensor) -> Tensor:
    """``softplus⁻¹(x) = x + log(−expm1(−x))`` for ``x > 0``."""
    return x + torch.log(-torch.expm1(-x))


def discretize(log_A: Tensor, log_dt: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold of the adapter's continuous diagonal system (spec §4.1).

    ``log_A, log_dt (d,)``, ``B (d, D)`` -> ``Ā = exp(Δ ⊙ a) (d,)`` and
    ``B̄ = ((Ā − 1)/a)[:, None] ⊙ B (d, D)``, with ``a = −exp(log_A)``, ``Δ = softplus(log_dt)``.
    """
    a = -torch.exp(log_A)  # (d,)
    A_bar = torch.exp(F.softplus(log_dt) * a)  # (d,) in (0, 1)
    return A_bar, ((A_bar - 1) / a)[:, None] * B  # (d,), (d, D)


def _add(fresh: Tensor, other: Tensor) -> Tensor:
    """``other + fresh``, in place into ``fresh`` (a temporary no backward reads) when the
    shapes and dtypes allow it."""
    if fresh.shape == other.shape and fresh.dtype == other.dtype:
        return fresh.add_(other)
    return other + fresh


class _HRMBypass(AdapterLayer):
    """Shared wrapper logic: ``base_layer`` plus ``g · SSM(u)``; subclasses define the system.

    ``post_ln=False`` (decoder MLP): ``forward(u) = base_layer(u) + g·y(u)``.
    ``post_ln=True`` (BERT ``output``): ``forward(x, u) = base_layer(x, u + g·y(u))``.
    """

    def __init__(self, base_layer: nn.Module, post_ln: bool, scan: str):
        super().__init__()
        self.base_layer = base_layer
        self.post_ln = post_ln
        self.scan = scan
        self.stateful = False
        """Carry the state across calls (KV-cached generation; see :func:`hrm_generation`)."""
        self._state: Tensor | None = None

    def system(self) -> tuple[Tensor, Tensor, Tensor]:
        """Discrete ``(Ā (d,), B̄ (d, D), C (D, d))``."""
        raise NotImplementedError

    def ssm(self, u: Tensor) -> Tensor:
        """``y = SSM(u)``: ``(B, L, D)`` -> ``(B, L, D)`` in ``u``'s dtype."""
        A_bar, B_bar, C = self.system()
        if self.stateful and self._state is not None and u.shape[1] == 1:
            y, state = lti_step(u[:, 0], self._state, A_bar, B_bar, C)
            y = y[:, None]
        else:
            prev = self._state if self.stateful else None
            y, state = lti_scan(u, A_bar, B_bar, C, state=prev, method=self.scan)
        if self.stateful:
            self._state = state.detach()
        return y

    def bypass(self, u: Tensor) -> Tensor:
        """``g · SSM(u)`` in ``u``'s dtype."""
        return (self.gate * self.ssm(u).float()).to(u.dtype)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        # The sums are accumulated in place into the fresh ``g·y`` buffer, which no backward
        # needs (``g·y``'s backward reads ``g`` and ``y``): bitwise the same as ``a + g·y``
        # (IEEE addition commutes) without one more ``(B, L, D)`` tensor per layer.
        if self.post_ln:
            u = args[0] if args else kwargs.pop("input_tensor")
            return self.base_layer(x, _add(self.bypass(u), u), *args[1:], **kwargs)
        out = self.base_layer(x, *args, **kwargs)
        return _add(self.bypass(x), out)

    def reset_state(self) -> None:
        self._state = None

    def merge(self) -> None:
        raise SsmloraError(
            "An HRM adapter cannot be merged: its SSM mixes tokens along the sequence, which no "
            "weight of the per-token MLP can express. Run the model with the adapter in place."
        )

    def unmerge(self) -> None:
        """Nothing to undo: an HRM adapter is never merged."""


class HRMLayer(_HRMBypass):
    """The trained adapter: continuous diagonal parameters ``log_A, log_dt (d,)``, ``B (d, D)``,
    ``C (D, d)``, scalar ``gate``, discretised by zero-order hold (spec §4.1)."""

    def __init__(
        self,
        base_layer: nn.Module,
        d_model: int,
        d_state: int,
        *,
        gate_init: float = 0.01,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        scan: str = "auto",
        post_ln: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__(base_layer, post_ln, scan)
        kw = {"device": device, "dtype": torch.float32}
        self.log_A = nn.Parameter(torch.empty(d_state, **kw))
        self.log_dt = nn.Parameter(torch.empty(d_state, **kw))
        self.B = nn.Parameter(torch.empty(d_state, d_model, **kw))
        self.C = nn.Parameter(torch.empty(d_model, d_state, **kw))
        self.gate = nn.Parameter(torch.empty((), **kw))
        for p in (self.log_A, self.log_dt, self.gate):
            setattr(p, NO_DECAY_ATTR, True)
        self.dt_range = (dt_min, dt_max)
        self.gate_init = gate_init
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        d, D = self.B.shape
        self.log_A.copy_(torch.log(torch.arange(1, d + 1, dtype=torch.float32)))  # a = −(1..d)
        lo, hi = (math.log(v) for v in self.dt_range)
        dt = torch.exp(torch.rand(d, device=self.log_dt.device) * (hi - lo) + lo)  # logU[lo, hi]
        self.log_dt.copy_(inverse_softplus(dt))
        nn.init.normal_(self.B, std=1 / math.sqrt(D))
        nn.init.normal_(self.C, std=1 / math.sqrt(d))
        self.gate.fill_(self.gate_init)

    def system(self) -> tuple[Tensor, Tensor, Tensor]:
        A_bar, B_bar = discretize(self.log_A, self.log_dt, self.B)
        return A_bar, B_bar, self.C


class HRMModalLayer(_HRMBypass):
    """A reduced adapter in modal form (spec §4.3): ``n_real`` real modes and ``n_complex``
    complex ones (each standing for a conjugate pair), ``y = Re(Ĉ s)``.

    Parameters: ``log_A, theta (n_real + n_complex,)`` with modes ``λ = exp(−exp(log_A) + i·theta)``
    (``|λ| < 1`` for any value); real ``B (d̂, D)`` and ``C (D, d̂)`` with ``d̂ = n_real +
    2·n_complex``: the real modes' rows/columns, then the complex modes' real parts, then their
    imaginary parts; scalar ``gate``. ``2d̂D + 2(d̂ − n_complex) + 1`` parameters.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        d_model: int,
        d_state: int,
        n_complex: int = 0,
        *,
        gate_init: float = 0.01,
        scan: str = "auto",
        post_ln: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__(base_layer, post_ln, scan)
        if not 0 <= 2 * n_complex <= d_state:
            raise SsmloraError(f"Modal HRM layer: need 2·n_complex <= d_state, got {n_complex}.")
        self.n_complex = n_complex
        modes = d_state - n_complex
        kw = {"device": device, "dtype": torch.float32}
        self.log_A = nn.Parameter(torch.full((modes,), math.log(0.1), **kw))  # |λ| ≈ 0.905
        self.theta = nn.Parameter(torch.zeros(modes, **kw))
        self.B = nn.Parameter(torch.zeros(d_state, d_model, **kw))
        self.C = nn.Parameter(torch.zeros(d_model, d_state, **kw))
        self.gate = nn.Parameter(torch.full((), gate_init, **kw))
        for p in (self.log_A, self.theta, self.gate):
            setattr(p, NO_DECAY_ATTR, True)

    def system(self) -> tuple[Tensor, Tensor, Tensor]:
        A_bar = torch.polar(torch.exp(-torch.exp(self.log_A)), self.theta)  # (k,) complex
        r, m = self.B.shape[0] - 2 * self.n_complex, self.n_complex
        B = torch.cat(
            [self.B[:r].to(A_bar.dtype), torch.complex(self.B[r : r + m], self.B[r + m :])]
        )
        C = torch.cat(
            [
                self.C[:, :r].to(A_bar.dtype),
                torch.complex(self.C[:, r : r + m], self.C[:, r + m :]),
            ],
            dim=1,
        )
        return A_bar, B, C  # (k,), (k, D), (D, k)


def modal_tensors(lam: Tensor, B: Tensor, C: Tensor, n_complex: int) -> dict[str, Tensor]:
    """:class:`HRMModalLayer` parameters (fp32) for modes ``λ (k,)``, ``B̂ (k, D)``, ``Ĉ (D, k)``
    (complex, ``|λ| < 1``; the last ``n_complex`` complex, the others real)."""
    r = lam.numel() - n_complex
    radius = lam.abs().clamp(min=1e-30)
    return {
        "log_A": torch.log(-torch.log(radius)).float(),
        "theta": torch.angle(lam).float(),
        "B": torch.cat([B[:r].real, B[r:].real, B[r:].imag]).float().contiguous(),
        "C": torch.cat([C[:, :r].real, C[:, r:].real, C[:, r:].imag], 1).float().contiguous(),
    }


def ffn_kind(model: nn.Module, name: str, module: nn.Module) -> str | None:
    """``mlp`` (decoder MLP), ``post_ln`` (a BERT-like layer's FFN ``output``), or None."""
    if name.endswith(".mlp"):
        return "mlp"
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if (
        name.endswith(".output")
        and isinstance(getattr(module, "LayerNorm", None), nn.LayerNorm)
        and hasattr(parent, "intermediate")
    ):
        return "post_ln"
    return None


def inject_hrm(model: nn.Module, config: HRMConfig, skip: list[str]) -> list[str]:
    """Wrap every selected MLP of ``model`` in :class:`HRMLayer` (or :class:`HRMModalLayer` for a
    reduced config); returns the wrapped names."""
    kinds = {
        name: kind
        for name, module in model.named_modules()
        if name and (kind := ffn_kind(model, name, module)) is not None
    }
    types = tuple({type(model.get_submodule(n)) for n in kinds}) or (type(None),)
    names = find_config_targets(
        model, config, skip, target_modules=config.target_modules or FFN_PATTERN, types=types
    )
    hf_config = getattr(model, "config", None)
    d_model = getattr(hf_config, "hidden_size", None)
    if not isinstance(d_model, int):
        raise SsmloraError(
            f"HRM reads the model width from model.config.hidden_size, which "
            f"{type(model).__name__} does not have; use a Llama/Mistral/GPT-2/BERT-like model."
        )
    if getattr(hf_config, "chunk_size_feed_forward", 0):
        raise SsmloraError(
            "HRM needs the whole sequence in one FFN call; set chunk_size_feed_forward=0."
        )
    for name in names:
        if name not in kinds:
            raise SsmloraError(
                f"HRM target {name!r} is not a layer's MLP; targets must be among: "
                f"{', '.join(list(kinds)[:8])}..."
            )
        base = model.get_submodule(name)
        device = next(base.parameters()).device
        post_ln = kinds[name] == "post_ln"
        if config.modal:
            size = (config.state_sizes or {}).get(name)
            if size is None:
                raise SsmloraError(
                    f"The reduced HRM config has no state size for {name!r}; it was reduced "
                    "from another model. Reduce this model's own adapter."
                )
            pairs = (config.complex_modes or {}).get(name, 0)
            layer = HRMModalLayer(
                base, d_model, size, pairs, gate_init=config.gate_init, scan=config.scan,
                post_ln=post_ln, device=device,
            )  # fmt: skip
        else:
            size = (config.state_sizes or {}).get(name, config.d_state)
            layer = HRMLayer(
                base, d_model, size, gate_init=config.gate_init, dt_min=config.dt_min,
                dt_max=config.dt_max, scan=config.scan, post_ln=post_ln, device=device,
            )  # fmt: skip
        if config.train == "gate":  # e.g. fine-tune a reduced adapter's gates only
            for param_name, param in layer.named_parameters():
                if not param_name.startswith("base_layer.") and param_name != "gate":
                    param.requires_grad_(False)
        replace_module(model, name, layer)
    return names


def hrm_layers(model: nn.Module) -> dict[str, _HRMBypass]:
    """The HRM layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _HRMBypass)}


@contextlib.contextmanager
def hrm_generation(model: nn.Module) -> Iterator[nn.Module]:
    """Carry each HRM layer's SSM state across forward calls, for KV-cached generation.

    With a KV cache, each decode call sees only the new tokens; the SSM must continue from the
    state the previous call ended in (the prefill's last state, then each step's). Use one
    context per ``generate`` call, with ``use_cache=True``; without a cache the model re-reads the
    whole sequence each step and must run outside this context. States start at zero on entry and
    are dropped on exit.
    """
    layers = list(hrm_layers(model).values())
    for layer in layers:
        layer.reset_state()
        layer.stateful = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.stateful = False
            layer.reset_state()


@dataclass
class HRMLayerStats:
    """Diagnostics of one HRM layer."""

    gate: float
    """The gate ``g``."""
    decay: Tensor
    """``|Ā|`` per state dimension, ``(d,)``, in ``(0, 1)`` (near 1: long memory)."""

    @property
    def timescale(self) -> Tensor:
        """Memory length in tokens per state dimension, ``−1/log|Ā|``."""
        return -1 / torch.log(self.decay)


@torch.no_grad()
def hrm_diagnostics(model: nn.Module) -> dict[str, HRMLayerStats]:
    """Each HRM layer's gate and decay rates ``|Ā|``, by layer name."""
    stats = {}
    for name, layer in hrm_layers(model).items():
        A_bar, _, _ = layer.system()
        stats[name] = HRMLayerStats(gate=float(layer.gate), decay=A_bar.abs().float().cpu())
    return stats
