"""The adapter *method* contract: what one adapter method tells the rest of the app.

As ``peft``'s ``register_peft_method``, each method file defines its config class and injector
and registers one :class:`AdapterMethod` (``register_adapter(AdapterMethod(...))`` at import, see
:mod:`ssmlora_app.adapters.registry`). Everything else is an optional hook, read by generic code:

=====================  ===========================================================================
hook                   read by
=====================  ===========================================================================
``inject``             :func:`~ssmlora_app.adapters.inject.inject_adapters` (layer injection,
                       re-parametrisation, or unfreezing a parameter subset: any backbone
                       parameter the injector leaves trainable is saved with the adapter)
``wrap_model``         ``inject_adapters``, after ``inject``: whole-model wrapping (its result is
                       the model that trains, e.g. a ``peft`` prompt-tuning model)
``state``              ``adapter_state_dict``, ``save_adapter``, ``load_adapter``: a wrapper's own
                       tensors and its folder layout (e.g. ``peft``'s, so ``peft`` loads it)
``merge``              :func:`~ssmlora_app.adapters.merge.merge_and_unload` of a wrapper (it
                       returns the plain backbone)
``virtual_tokens``     the model factory's positions check (tokens a method prepends)
``backbone_kwargs``    the model factory (``from_pretrained`` keyword arguments, e.g. a 4-bit
                       quantisation config: the method changes how the backbone is loaded)
``mergeable``          ``ssmlora export`` and :func:`~ssmlora_app.adapters.merge.merge_and_unload`
                       (a flag, or a function of the config for a method that merges or not by
                       its options; ``identity_at_init`` likewise)
``peft_config``        :func:`~ssmlora_app.adapters.io.save_adapter` (fields that make the adapter
                       folder a ``peft`` folder)
``callbacks``          the LightningModule's ``configure_callbacks``: training phases (SDT's
                       dimension selection), per-step hooks (AdaLoRA's budget allocation)
``diagnostics``        the generic :class:`~ssmlora_app.callbacks.AdapterDiagnostics` callback
``generation``         the objectives' ``generate`` (stateful decoding with a KV cache)
``lm_loss``            the causal-LM objectives' training loss (a method that trains otherwise:
                       HRM's chunked truncated BPTT)
``commands``           the ``ssmlora`` CLI (a method's own subcommands, e.g. HRM's ``reduce``)
``bench``              ``ssmlora bench`` (the configurations it measures on a backbone)
=====================  ===========================================================================

No generic file names a method: adding one is a new file plus one import line in
``ssmlora_app/adapters/__init__.py`` (or, outside the package, importing the file, which a
``class_path`` to its config class does by itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ssmlora_app.adapters.base import AdapterConfig


@dataclass
class Diagnostics:
    """What a method's ``diagnostics`` hook reports about a model at one moment."""

    scalars: dict[str, float] = field(default_factory=dict)
    """Tag -> value, logged to every logger (``hrm/gate/<layer>``, ``ssmlora/<chain>/...``)."""
    histograms: dict[str, Tensor] = field(default_factory=dict)
    """Tag -> values (1-D), written as TensorBoard histograms (``hrm/A_bar``)."""


@dataclass(frozen=True)
class BenchSettings:
    """What ``ssmlora bench`` tells a method's ``bench`` hook about the backbone it measures."""

    targets: tuple[str, ...]
    """The preset's linear targets (LoRA's ``target_modules``: query/value, q_proj/v_proj, ...)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The preset's settings for this method (e.g. ``{"d_state": 32}`` for HRM); may be empty."""


@dataclass(frozen=True)
class AdapterState:
    """Where a whole-model wrapper keeps its adapter and how its folder is laid out (a ``peft``
    model: ``peft``'s own layout, so ``PeftModel.from_pretrained`` loads the folder). Methods
    without it use the generic layout: adapter layers, trained backbone parameters and the head,
    keyed ``base_model.model.<name in the model>``."""

    tensors: Callable[[nn.Module], dict[str, Tensor]]
    """The adapter's tensors keyed by their names in the model (what checkpoints keep; every
    trainable parameter among them)."""
    save: Callable[[nn.Module], dict[str, Tensor]]
    """The tensors of adapter_model.safetensors, keyed as the folder stores them."""
    load: Callable[[nn.Module, Mapping[str, Any], dict[str, Tensor], bool], None]
    """``load(model, adapter_config.json, tensors, load_head)``: put a folder's tensors into the
    injected ``model`` (the head's only with ``load_head``); raise
    :class:`~ssmlora_app.errors.SsmloraError` when they do not fit."""


Injector = Callable[[nn.Module, AdapterConfig, Sequence[str]], list[str]]
"""``inject(model, config, skip) -> adapted names``: adapt ``model`` in place (it arrives frozen),
never touching the modules under ``skip`` (the fully trained head)."""


@dataclass(frozen=True)
class AdapterMethod:
    """One adapter method: its config class, its injector and its optional hooks."""

    config_cls: type[AdapterConfig]
    """The dataclass config (its ``adapter_type`` is the method's name; its fields are the
    ``--model.adapter.init_args.*`` options)."""

    inject: Injector
    """See :data:`Injector`."""

    mergeable: bool | Callable[[AdapterConfig], bool] = False
    """The adapted model can be folded into plain backbone weights (``ssmlora export`` then writes
    ``merged/``); a function of the config where that depends on the method's options (see
    :meth:`can_merge`). Non-mergeable methods refuse :func:`merge_and_unload` with a clear error."""

    identity_at_init: bool | Callable[[AdapterConfig], bool] = True
    """A freshly injected model computes exactly what the frozen one does (tested); a function of
    the config where that depends on the method's options (see :meth:`is_identity_at_init`)."""

    peft_config: Callable[[nn.Module, AdapterConfig], dict | None] | None = None
    """For methods ``peft`` can load: the ``peft`` config fields written to adapter_config.json
    for this adapted model (None where its layout is not ``peft``'s)."""

    backbone_kwargs: Callable[[AdapterConfig], dict] | None = None
    """Extra ``from_pretrained`` keyword arguments the method needs to load the backbone."""

    wrap_model: Callable[[nn.Module, AdapterConfig], nn.Module] | None = None
    """Whole-model wrapping after ``inject``: returns the model to train in place of ``model``."""

    state: AdapterState | None = None
    """A wrapper's adapter tensors and folder layout (see :class:`AdapterState`); None: the
    generic layout."""

    merge: Callable[[nn.Module], nn.Module] | None = None
    """Merge-and-unload of a wrapper: fold the adapter into the backbone and return the plain
    backbone (None: the generic merge of adapter layers and re-parametrisations)."""

    virtual_tokens: Callable[[AdapterConfig], int] | None = None
    """Positions the method adds in front of every input (prompt tuning's virtual tokens): the
    backbone's positions must hold ``data.max_length`` plus these."""

    callbacks: Callable[[AdapterConfig], list] | None = None
    """Lightning callbacks the method needs in every ``fit``/``validate``/... (training phases,
    per-step hooks); added by the module's ``configure_callbacks``."""

    diagnostics: Callable[[nn.Module], Diagnostics] | None = None
    """Values worth watching during training, read from the adapted model."""

    generation: Callable[[nn.Module], AbstractContextManager] | None = None
    """A context for one KV-cached ``generate`` call (a method with state across decode steps)."""

    lm_loss: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor] | None = None
    """``lm_loss(model, input_ids, attention_mask, labels)``: the causal-LM training loss where
    the method computes it otherwise than one forward (HRM's chunked truncated BPTT); its value
    is the forward's loss. None: ``model(..., labels=labels).loss``."""

    commands: Mapping[str, Callable[..., None]] = field(default_factory=dict)
    """Subcommands of ``ssmlora`` (name -> typed function; its docstring is the ``--help``)."""

    bench: Callable[[nn.Module, BenchSettings], dict[str, AdapterConfig]] | None = None
    """Row name -> config measured by ``ssmlora bench`` on a backbone; raise
    :class:`~ssmlora_app.errors.SsmloraError` when the method does not apply to it. None: one row
    named after the method with the default config."""

    def can_merge(self, config: AdapterConfig) -> bool:
        """Whether a model adapted with ``config`` can be merged (see :attr:`mergeable`)."""
        return self.mergeable(config) if callable(self.mergeable) else bool(self.mergeable)

    def is_identity_at_init(self, config: AdapterConfig) -> bool:
        """Whether ``config`` promises zero effect at init (see :attr:`identity_at_init`)."""
        init = self.identity_at_init
        return init(config) if callable(init) else bool(init)

    def extra_positions(self, config: AdapterConfig) -> int:
        """Positions ``config`` adds in front of every input (see :attr:`virtual_tokens`)."""
        return self.virtual_tokens(config) if self.virtual_tokens is not None else 0

    @property
    def name(self) -> str:
        return self.config_cls.adapter_type

    @property
    def class_path(self) -> str:
        """The config class's import path (what ``model.adapter.class_path`` takes)."""
        return f"{self.config_cls.__module__}.{self.config_cls.__qualname__}"

    def bench_configs(self, model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
        """The configurations ``ssmlora bench`` measures on ``model``."""
        if self.bench is not None:
            return self.bench(model, settings)
        return {self.name: self.config_cls(**dict(settings.options))}
