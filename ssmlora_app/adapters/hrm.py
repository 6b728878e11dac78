"""HRM adapter (Thapliyal 2026, "SSM Adapters via Hankel Reduced-order Modeling", arXiv
2606.26290): a gated diagonal LTI SSM beside each MLP.

For a decoder layer with MLP input ``u = LN₂(h)`` (``(B, L, D)``), the HRM paper's adapter::

    h ← h + MLP(u) + g · y,    y = SSM(u)
    a = −exp(log_A),  Δ = softplus(log_dt),  Ā = exp(Δ ⊙ a) ∈ (0, 1)^d
    B̄ = ((Ā − 1)/a)[:, None] ⊙ B,   s_t = Ā ⊙ s_{t−1} + B̄ u_t,   y_t = C s_t

with ``B (d, D)``, ``C (D, d)``, a scalar gate ``g``: ``2dD + 2d + 1`` parameters per layer, all
fp32 (the layers are in :mod:`ssmlora_app.adapters.hrm_layers`). The scan is
:func:`ssmlora_app.ssm.lti_scan` (exact FFT convolution, or the sequential reference).

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

Method hooks: diagnostics (each layer's gate and decay rates), stateful decoding (the SSM state
carried across KV-cached decode steps) and the ``reduce`` subcommand (balanced truncation, see
:mod:`ssmlora_app.adapters.hrm_reduce`). Not mergeable: the SSM mixes tokens along the sequence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.hrm_layers import HRMLayer, HRMModalLayer, carried_state, hrm_layers
from ssmlora_app.adapters.hrm_reduce import reduce_command
from ssmlora_app.adapters.hrm_tbptt import tbptt_loss
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings, Diagnostics
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.adapters.targets import find_config_targets, replace_module
from ssmlora_app.errors import SsmloraError
from ssmlora_app.ssm.scan import SCAN_METHODS

FFN_PATTERN = r".*\.\d+\.(mlp|output)"
"""Default ``target_modules``: every layer's MLP (``...layers.3.mlp``, ``...h.3.mlp``) or, in
BERT-like models, its FFN output module (``...layer.3.output``, not ``attention.output``)."""


@dataclass
class HRMConfig(AdapterConfig):
    """HRM: a gated diagonal SSM parallel to each MLP."""

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

    dt_clamp: bool = False
    """Clamp ``Δ`` to ``[dt_min, dt_max]`` in every forward, as the HRM reference code does (for
    runs that must match it). Off by default: a hard clamp zeroes Δ's gradient outside the range,
    so a step that leaves it can never come back."""

    tbptt_chunk: int | None = None
    """Train causal-LM sequences longer than this in chunks of this many tokens (truncated BPTT,
    :mod:`ssmlora_app.adapters.hrm_tbptt`): the SSM state and the attention's KV cache carried
    from chunk to chunk, detached, so activation memory is one chunk's; the loss value is the
    whole sequence's. None: one forward."""

    state_clip: float | None = None
    """Largest norm of the SSM state carried across chunks (and across KV-cached decode steps),
    per example; None: no clip."""

    freeze_gate: bool = False
    """Keep the gate ``g`` at ``gate_init`` (the HRM reference's frozen-gate ablation): the SSM
    trains, its output scale does not. With ``gate_init: 0`` the adapter then has no effect."""

    scan: str = "fft"
    """``fft`` (exact FFT convolution, fast) or ``sequential`` (the reference recurrence)."""

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
        if self.tbptt_chunk is not None and (
            not isinstance(self.tbptt_chunk, int) or self.tbptt_chunk <= 0
        ):
            raise SsmloraError(
                f"HRM tbptt_chunk must be a positive integer, got {self.tbptt_chunk!r}."
            )
        if self.state_clip is not None and not self.state_clip > 0:
            raise SsmloraError(f"HRM state_clip must be positive, got {self.state_clip!r}.")
        if self.freeze_gate and self.train == "gate":
            raise SsmloraError(
                "HRM freeze_gate with train: gate would train nothing; choose one of them."
            )
        if self.scan not in SCAN_METHODS:
            raise SsmloraError(f"HRM scan must be one of {SCAN_METHODS}, got {self.scan!r}.")
        if self.modal and not self.state_sizes:
            raise SsmloraError(
                "HRMConfig(modal=True) needs state_sizes (written by ssmlora reduce); reduce a "
                "trained HRM adapter instead of writing a modal config by hand."
            )


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


def inject_hrm(model: nn.Module, config: HRMConfig, skip: Sequence[str]) -> list[str]:
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
                dt_max=config.dt_max, dt_clamp=config.dt_clamp, scan=config.scan,
                post_ln=post_ln, device=device,
            )  # fmt: skip
        if config.train == "gate":  # e.g. fine-tune a reduced adapter's gates only
            for param_name, param in layer.named_parameters():
                if not param_name.startswith("base_layer.") and param_name != "gate":
                    param.requires_grad_(False)
        if config.freeze_gate:  # the frozen-gate ablation: g stays at gate_init
            layer.gate.requires_grad_(False)
        layer.state_clip = config.state_clip
        replace_module(model, name, layer)
    return names


@contextlib.contextmanager
def hrm_generation(model: nn.Module) -> Iterator[nn.Module]:
    """The method's ``generation`` hook: each HRM layer's SSM state carried across the KV-cached
    decode calls of one ``generate`` (:func:`~ssmlora_app.adapters.hrm_layers.carried_state`:
    zero on entry, dropped on exit; use ``use_cache=True``).

    Beam search keeps one state per beam (the batch rows ``generate`` expands the prompt to) and
    reorders the rows with the KV cache after every step: ``generate`` calls the model's
    ``_reorder_cache(cache, beam_idx)`` when it has one, which this context provides for its
    duration (it reorders the states, then the cache as ``generate`` would have).
    """
    layers = list(hrm_layers(model).values())
    model_reorder = getattr(type(model), "_reorder_cache", None)  # a model's own (static) one

    def reorder_cache(cache, beam_idx: Tensor):
        for layer in layers:
            layer.reorder_state(beam_idx)
        if model_reorder is not None:
            return model_reorder(cache, beam_idx)
        cache.reorder_cache(beam_idx)
        return cache

    with carried_state(model):
        model._reorder_cache = reorder_cache
        try:
            yield model
        finally:
            del model._reorder_cache


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


def diagnostics(model: nn.Module) -> Diagnostics:
    """``hrm/gate/<layer>`` scalars, and histograms of ``|Ā|``: ``hrm/A_bar`` over all layers and
    ``hrm/A_bar/<layer>`` per layer (near 1 is long memory)."""
    stats = hrm_diagnostics(model)
    result = Diagnostics()
    if not stats:
        return result
    result.scalars = {f"hrm/gate/{name}": s.gate for name, s in stats.items()}
    result.histograms["hrm/A_bar"] = torch.cat([s.decay for s in stats.values()])
    result.histograms.update({f"hrm/A_bar/{name}": s.decay for name, s in stats.items()})
    return result


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    d_state = settings.options.get("d_state", 16)  # 16 ≈ LoRA r=8 on query and value
    return {f"hrm_{scan}": HRMConfig(d_state=d_state, scan=scan) for scan in SCAN_METHODS}


register_adapter(
    AdapterMethod(
        HRMConfig,
        inject_hrm,
        identity_at_init=False,  # the gate starts at gate_init (0.01); gate_init: 0 is exact
        diagnostics=diagnostics,
        generation=hrm_generation,
        lm_loss=tbptt_loss,
        commands={"reduce": reduce_command},
        bench=_bench,
    )
)
