"""HRM's adapter layers (HRM paper §3.1-3.3): a gated diagonal LTI SSM beside a module.

For an MLP input ``u (B, L, D)`` the layer adds ``g · y`` to the MLP's output::

    a = −exp(log_A),  Δ = softplus(log_dt),  Ā = exp(Δ ⊙ a) ∈ (0, 1)^d        (zero-order hold)
    B̄ = ((Ā − 1)/a)[:, None] ⊙ B,   s_t = Ā ⊙ s_{t−1} + B̄ u_t,   y_t = C s_t

:class:`HRMLayer` holds the trained continuous parameters; :class:`HRMModalLayer` the reduced
modal form written by ``ssmlora reduce``. Both run through :func:`ssmlora_app.ssm.lti_scan`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmlora_app.adapters.base import AdapterLayer
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import NO_DECAY_ATTR
from ssmlora_app.ssm.scan import lti_scan, lti_step


def inverse_softplus(x: Tensor) -> Tensor:
    """``softplus⁻¹(x) = x + log(−expm1(−x))`` for ``x > 0``."""
    return x + torch.log(-torch.expm1(-x))


def discretize(
    log_A: Tensor, log_dt: Tensor, B: Tensor, dt_range: tuple[float, float] | None = None
) -> tuple[Tensor, Tensor]:
    """Zero-order hold of the adapter's continuous diagonal system (the HRM paper's discretisation).

    ``log_A, log_dt (d,)``, ``B (d, D)`` -> ``Ā = exp(Δ ⊙ a) (d,)`` and
    ``B̄ = ((Ā − 1)/a)[:, None] ⊙ B (d, D)``, with ``a = −exp(log_A)``, ``Δ = softplus(log_dt)``,
    clamped to ``dt_range = (dt_min, dt_max)`` when given (the HRM reference code's clamp; its
    gradient is zero outside the range).
    """
    a = -torch.exp(log_A)  # (d,)
    dt = F.softplus(log_dt)  # (d,)
    if dt_range is not None:
        dt = dt.clamp(*dt_range)
    A_bar = torch.exp(dt * a)  # (d,) in (0, 1)
    return A_bar, ((A_bar - 1) / a)[:, None] * B  # (d,), (d, D)


def clip_norm(state: Tensor, max_norm: float | None) -> Tensor:
    """``state (B, d)`` with each row's norm scaled down to at most ``max_norm`` (None: as is)."""
    if max_norm is None:
        return state
    norms = torch.linalg.vector_norm(state, dim=-1, keepdim=True)  # (B, 1), |·| of complex modes
    return state * (max_norm / norms.clamp(min=max_norm)).to(state.dtype)


def _add(fresh: Tensor, other: Tensor) -> Tensor:
    """``other + fresh``, in place into ``fresh`` (a temporary no backward reads) when the
    shapes and dtypes allow it."""
    if fresh.shape == other.shape and fresh.dtype == other.dtype:
        return fresh.add_(other)
    return other + fresh


class HRMBypass(AdapterLayer):
    """Shared wrapper logic: ``base_layer`` plus ``g · SSM(u)``; subclasses define the system.

    ``post_ln=False`` (decoder MLP): ``forward(u) = base_layer(u) + g·y(u)``.
    ``post_ln=True`` (BERT ``output``): ``forward(x, u) = base_layer(x, u + g·y(u))``.

    The gate ``g`` is a one-element tensor ``(1,)``, not a 0-d one: FSDP refuses 0-d parameters.
    """

    resizable = ("gate",)
    """Adapters saved before the gate was ``(1,)`` hold a 0-d one (reshaped on load)."""

    def __init__(self, base_layer: nn.Module, post_ln: bool, scan: str):
        super().__init__()
        self.base_layer = base_layer
        self.post_ln = post_ln
        self.scan = scan
        self.stateful = False
        """Carry the state across calls (KV-cached generation; see :func:`hrm_generation`)."""
        self._state: Tensor | None = None
        self.state_clip: float | None = None
        """Largest norm of the carried state per example (rescaled down to it when larger); None:
        no clip. Applies only where the state is carried across calls (``stateful``)."""
        self.tap: Callable[[Tensor, Tensor], None] | None = None
        """Called as ``tap(u, y)`` with each forward's input and SSM output (calibration
        statistics, :mod:`ssmlora_app.adapters.hrm_calibration`); None in training."""

    def system(self) -> tuple[Tensor, Tensor, Tensor]:
        """Discrete ``(Ā (d,), B̄ (d, D), C (D, d))``."""
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "gate"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
            self._state = clip_norm(state.detach(), self.state_clip)
        if self.tap is not None:
            self.tap(u, y)
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

    def reorder_state(self, beam_idx: Tensor) -> None:
        """Beam search: row ``i`` of the carried state ``(B, d)`` becomes row ``beam_idx[i]``,
        as the KV cache's rows do (see :func:`hrm_generation`)."""
        if self._state is not None:
            self._state = self._state.index_select(0, beam_idx.to(self._state.device))

    def merge(self) -> None:
        raise SsmloraError(
            "An HRM adapter cannot be merged: its SSM mixes tokens along the sequence, which no "
            "weight of the per-token MLP can express. Run the model with the adapter in place."
        )

    def unmerge(self) -> None:
        """Nothing to undo: an HRM adapter is never merged."""


class HRMLayer(HRMBypass):
    """The trained adapter: continuous diagonal parameters ``log_A, log_dt (d,)``, ``B (d, D)``,
    ``C (D, d)``, ``gate (1,)``, discretised by zero-order hold."""

    def __init__(
        self,
        base_layer: nn.Module,
        d_model: int,
        d_state: int,
        *,
        gate_init: float = 0.01,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_clamp: bool = False,
        scan: str = "auto",
        post_ln: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__(base_layer, post_ln, scan)
        kw = {"device": device, "dtype": torch.float32}
        self.dt_clamp = dt_clamp
        """Clamp ``Δ`` to ``[dt_min, dt_max]`` in every forward (the HRM reference code's)."""
        self.log_A = nn.Parameter(torch.empty(d_state, **kw))
        self.log_dt = nn.Parameter(torch.empty(d_state, **kw))
        self.B = nn.Parameter(torch.empty(d_state, d_model, **kw))
        self.C = nn.Parameter(torch.empty(d_model, d_state, **kw))
        self.gate = nn.Parameter(torch.empty(1, **kw))
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
        dt_range = self.dt_range if self.dt_clamp else None
        A_bar, B_bar = discretize(self.log_A, self.log_dt, self.B, dt_range)
        return A_bar, B_bar, self.C


class HRMModalLayer(HRMBypass):
    """A reduced adapter in modal form (the HRM paper's reduced-order model, diagonalised): ``n_real`` real modes and ``n_complex``
    complex ones (each standing for a conjugate pair), ``y = Re(Ĉ s)``.

    Parameters: ``log_A, theta (n_real + n_complex,)`` with modes ``λ = exp(−exp(log_A) + i·theta)``
    (``|λ| < 1`` for any value); real ``B (d̂, D)`` and ``C (D, d̂)`` with ``d̂ = n_real +
    2·n_complex``: the real modes' rows/columns, then the complex modes' real parts, then their
    imaginary parts; ``gate (1,)``. ``2d̂D + 2(d̂ − n_complex) + 1`` parameters.
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
        self.gate = nn.Parameter(torch.full((1,), gate_init, **kw))
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


def hrm_layers(model: nn.Module) -> dict[str, HRMBypass]:
    """The HRM layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, HRMBypass)}


@contextlib.contextmanager
def carried_state(model: nn.Module) -> Iterator[nn.Module]:
    """Carry each HRM layer's SSM state across forward calls (detached, clipped to the layer's
    ``state_clip``): KV-cached generation and chunked truncated BPTT.

    With a KV cache, each call sees only the new tokens; the SSM must continue from the state the
    previous call ended in (the prefill's last state, then each step's). Use one context per
    ``generate`` call (or per chunked sequence), with ``use_cache=True``; without a cache the
    model re-reads the whole sequence each call and must run outside this context. States start at
    zero on entry and are dropped on exit.
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
