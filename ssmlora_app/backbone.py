"""Backbones and tokenizers: from the hub, a local folder, or a config dict (random weights)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

import torch
import yaml
from huggingface_hub.errors import StrictDataclassError
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils.import_utils import is_mambapy_available

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tokenization import check_source, require_gguf


@dataclass
class BackboneConfig:
    """Where the frozen backbone comes from. Give ``name_or_path`` or ``config``."""

    name_or_path: str | None = None
    """Hub id (``roberta-base``) or local folder with pretrained weights. Honours ``HF_HOME`` and
    ``HF_HUB_OFFLINE``."""

    config: dict | None = None
    """A transformers config as a dict with ``model_type`` (e.g. ``{model_type: roberta,
    hidden_size: 64, ...}``): the backbone is built with random weights (tests, quickstart)."""

    tokenizer: str | None = None
    """Tokenizer hub id or local folder (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``).
    Default: ``name_or_path``; with neither, the task's built-in tokenizer (synthetic tasks)."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) of ``name_or_path``."""

    trust_remote_code: bool = False
    """Allow model code from the hub repository to run. Off unless you trust the repository."""

    gguf_file: str | None = None
    """A GGUF checkpoint inside ``name_or_path`` (a folder or hub repository), e.g.
    ``SmolLM2-135M-Instruct.Q4_1.gguf``: transformers dequantises it to float32 weights, and its
    tokenizer comes from the same file (unless ``tokenizer`` is set). Needs the ``gguf`` package."""

    dropout: bool = True
    """Keep the backbone's dropout as its config sets it (what peft and HF ``Trainer`` fine-tune
    with: the frozen backbone still runs in train mode during fit). False builds the backbone with
    every dropout probability of its config at 0 (its head's included; the adapter's own dropout
    is set in the adapter's config)."""

    init_seed: int = 0
    """Seed for the random weights of a ``config`` backbone, so every process builds the same."""

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.config is None):
            raise SsmloraError(
                "Set exactly one of model.backbone.name_or_path (hub id or folder) and "
                "model.backbone.config (a config dict with model_type, for random weights)."
            )
        if self.config is not None and "model_type" not in self.config:
            raise SsmloraError("model.backbone.config needs a model_type (e.g. roberta).")
        if self.config is not None:  # a value set on the command line arrives as text: '32'
            self.config = {k: _yaml_scalar(v) for k, v in self.config.items()}
        if self.gguf_file is not None and self.name_or_path is None:
            raise SsmloraError(
                "model.backbone.gguf_file needs model.backbone.name_or_path: the folder or hub "
                "repository that holds the GGUF file."
            )
        # Local paths may start with ~ or name environment variables ($HOME/models/...).
        self.name_or_path = expand_path(self.name_or_path)
        self.tokenizer = expand_path(self.tokenizer)

    @property
    def tokenizer_source(self) -> str | None:
        return self.tokenizer or self.name_or_path

    @property
    def tokenizer_gguf_file(self) -> str | None:
        """The GGUF file the tokenizer comes from: the backbone's, unless a tokenizer is given."""
        return self.gguf_file if self.tokenizer is None else None

    def pretrained_kwargs(self) -> dict:
        """Keyword arguments of ``from_pretrained`` / ``AutoConfig.from_pretrained`` for
        ``name_or_path``."""
        kwargs = {"revision": self.revision, "trust_remote_code": self.trust_remote_code}
        if self.gguf_file is not None:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs


def _yaml_scalar(value):
    """A config-dict value given as text (``--model.backbone.config.hidden_size=32``) read as YAML
    reads it (32), when that gives a number or a boolean; anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, int | float | bool) else value


def expand_path(value: str | None) -> str | None:
    """``~`` and ``$VARS`` expanded when the result is an existing local path (hub ids untouched)."""
    if value is None or not ("~" in value or "$" in value):
        return value
    expanded = os.path.expanduser(os.path.expandvars(value))
    return expanded if os.path.exists(expanded) else value


def check_model_type(model_type: object) -> None:
    """:class:`SsmloraError` naming the closest known types when transformers has no
    ``model_type`` (its own message lists all of them)."""
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. bert, roberta, llama, mamba"
        raise SsmloraError(
            f"model.backbone.config: transformers has no model_type {model_type!r} ({hint})."
        )


def no_dropout(config: PretrainedConfig) -> dict[str, float]:
    """Config overrides that set every dropout probability of ``config`` to 0 (``*dropout*``,
    ``*pdrop*`` float fields: BERT's ``hidden_dropout_prob``, Llama's ``attention_dropout``,
    GPT-2's ``resid_pdrop`` ...)."""
    return {
        key: 0.0
        for key, value in config.to_dict().items()
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float)
    }


def _build(
    auto_cls,
    backbone: BackboneConfig,
    vocab_size: int | None,
    pad_token_id: int | None,
    defaults: dict | None = None,
    overrides: dict | None = None,
    wrap=None,
    tokenizer_fields: dict[str, int | None] | None = None,
    load_kwargs: dict | None = None,
):
    """``auto_cls`` (an ``AutoModel*`` class) from the config dict (random weights, seeded with
    ``backbone.init_seed``) or from the hub / a folder; ``wrap`` (if given) is applied to it.
    ``load_kwargs``: extra ``from_pretrained`` arguments an adapter method needs (its
    ``backbone_kwargs`` hook, e.g. a quantisation config); a config backbone ignores them.

    Config values: ``defaults`` < the config dict (or the checkpoint's config) < ``overrides``.
    A ``config`` backbone takes ``vocab_size``/``pad_token_id`` and ``tokenizer_fields`` (config
    field -> the tokenizer's value, None included) from the tokenizer unless its dict sets them.
    """
    defaults, overrides = defaults or {}, overrides or {}
    tokenizer_fields = tokenizer_fields or {}
    wrap = wrap or (lambda model: model)
    if not backbone.dropout:
        overrides = {**no_dropout(_config(backbone, defaults)), **overrides}
    if backbone.config is not None:
        fields = dict(backbone.config)
        model_type = fields.pop("model_type")
        if vocab_size is not None:
            fields.setdefault("vocab_size", vocab_size)
            if fields["vocab_size"] < vocab_size:
                raise SsmloraError(
                    f"model.backbone.config.vocab_size={fields['vocab_size']} is smaller than the "
                    f"tokenizer's {vocab_size} tokens."
                )
        if pad_token_id is not None:
            fields.setdefault("pad_token_id", pad_token_id)
        for name, value in tokenizer_fields.items():
            fields.setdefault(name, value)
        check_model_type(model_type)
        try:
            config = AutoConfig.for_model(model_type, **{**defaults, **fields, **overrides})
        except (ValueError, TypeError, KeyError, StrictDataclassError) as err:
            reason = " ".join(str(err).split())  # transformers' checks of the config's fields
            raise SsmloraError(f"model.backbone.config: {reason}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(backbone.init_seed)
            return wrap(auto_cls.from_config(config))
    extra = _gguf_kwargs() if backbone.gguf_file is not None else {}
    check_source(backbone.name_or_path, "Backbone")
    try:
        model = auto_cls.from_pretrained(
            backbone.name_or_path,
            **backbone.pretrained_kwargs(),
            **extra,
            **defaults,
            **overrides,
            **(load_kwargs or {}),
        )
    except OSError as err:
        raise SsmloraError(
            f"Cannot load backbone {backbone.name_or_path!r}: {err}. Give a hub id (with network "
            "or a filled HF cache) or a local folder, or model.backbone.config for random weights."
        ) from None
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # decoders (GPT-2, Llama) pool the last non-pad
    return wrap(model)


def _gguf_kwargs() -> dict:
    """``from_pretrained`` arguments that load a GGUF file as a plain dense float32 model.

    Recent transformers keep GGUF weights packed (its ``GgufLinear``, not trainable, not
    saveable: ``save_pretrained`` silently writes nothing) when a matmul kernel is installed;
    ``GgufConfig(dequantize=True)`` asks for ordinary ``nn.Linear`` weights instead, which
    adapters wrap and export merges. Older transformers always dequantised."""
    require_gguf()
    kwargs: dict = {"dtype": torch.float32}
    try:
        from transformers import GgufConfig
    except ImportError:
        return kwargs
    kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return kwargs


def build_classifier(
    backbone: BackboneConfig,
    num_labels: int,
    problem_type: str,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    load_kwargs: dict | None = None,
) -> PreTrainedModel:
    """A ``*ForSequenceClassification`` model with ``num_labels`` outputs (Mamba backbones:
    :class:`SSMForSequenceClassification`).

    ``problem_type`` is ``single_label_classification`` or ``regression`` (one output, MSE).
    """
    labels = {"num_labels": num_labels, "problem_type": problem_type}
    if _model_type(backbone) in SSM_MODEL_TYPES:
        # mambapy's parallel scan on the pure-PyTorch path when installed (the fused CUDA
        # kernels, when present, take precedence in training).
        defaults = {"use_mambapy": True} if is_mambapy_available() else {}
        return _build(AutoModel, backbone, vocab_size, pad_token_id, defaults, labels,
                      wrap=SSMForSequenceClassification, load_kwargs=load_kwargs)  # fmt: skip
    return _build(
        AutoModelForSequenceClassification, backbone, vocab_size, pad_token_id, overrides=labels,
        load_kwargs=load_kwargs,
    )  # fmt: skip


def build_with_head(
    auto_cls,
    backbone: BackboneConfig,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    load_kwargs: dict | None = None,
) -> PreTrainedModel:
    """The backbone with the fresh task head of ``auto_cls`` (``AutoModelForQuestionAnswering``:
    a span head ``qa_outputs``; ``AutoModelForMultipleChoice``: a ``classifier`` scoring each
    option). Raises :class:`SsmloraError` when transformers has no such model for the backbone
    (Mamba; a decoder without a multiple-choice head)."""
    kind = auto_cls.__name__.removeprefix("AutoModelFor")
    model_type = _model_type(backbone)
    if model_type in SSM_MODEL_TYPES:
        raise SsmloraError(
            f"{model_type} backbones have no *For{kind} model: use an encoder (BERT, RoBERTa, "
            "DeBERTa-v2) for this task."
        )
    try:
        return _build(auto_cls, backbone, vocab_size, pad_token_id, load_kwargs=load_kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        raise SsmloraError(
            f"transformers has no *For{kind} model for model_type={model_type!r}: use an "
            "encoder (BERT, RoBERTa, DeBERTa-v2) for this task."
        ) from None


SSM_MODEL_TYPES = ("mamba", "mamba2")
"""Backbones without a ``*ForSequenceClassification`` class in transformers: they get
:class:`SSMForSequenceClassification`."""


def _model_type(backbone: BackboneConfig) -> str | None:
    if backbone.config is not None:
        return backbone.config["model_type"]
    try:
        return _config(backbone).model_type
    except SsmloraError:
        return None  # from_pretrained below reports the problem


def _config(backbone: BackboneConfig, defaults: dict | None = None) -> PretrainedConfig:
    """The backbone's transformers config (from its dict, or read from ``name_or_path``)."""
    if backbone.config is not None:
        fields = dict(backbone.config)
        check_model_type(fields["model_type"])
        return AutoConfig.for_model(fields.pop("model_type"), **{**(defaults or {}), **fields})
    if backbone.gguf_file is not None:
        require_gguf()
    check_source(backbone.name_or_path, "Backbone")
    try:
        return AutoConfig.from_pretrained(backbone.name_or_path, **backbone.pretrained_kwargs())
    except (OSError, ValueError) as err:
        raise SsmloraError(f"Cannot read the config of {backbone.name_or_path!r}: {err}") from None


class SSMForSequenceClassification(nn.Module):
    """A Mamba / Mamba-2 base model with a linear ``score`` head on the last non-pad token.

    ``input_ids (B, L)`` → hidden states ``(B, L, D_m)`` → the state at each row's last position
    whose ``attention_mask`` is 1 (for right or left padding) → ``score`` → logits
    ``(B, num_labels)``. The loss follows ``config.problem_type`` (cross-entropy, or MSE for
    regression), like transformers' ``*ForSequenceClassification``. ``backbone`` is the model HF
    names ``backbone`` inside ``MambaForCausalLM``, so hub checkpoints load into it.
    """

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.config: PretrainedConfig = backbone.config
        self.backbone = backbone
        self.score = nn.Linear(self.config.hidden_size, self.config.num_labels, bias=False)
        nn.init.normal_(self.score.weight, std=getattr(self.config, "initializer_range", 0.02))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unused,  # token_type_ids etc. from tokenizers made for other models
    ) -> SequenceClassifierOutput:
        # no state cache: a classifier reads the sequence once
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = outputs[0]
        if attention_mask is None:
            pad = self.config.pad_token_id
            attention_mask = (
                torch.ones_like(input_ids) if pad is None else (input_ids != pad).long()
            )
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (attention_mask.long() * (positions + 1)).argmax(-1)  # (B,)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = self.score(pooled.to(self.score.weight.dtype))
        loss = None
        if labels is not None:
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


GENERATION_TOKENS = ("bos_token_id", "eos_token_id")
"""The special tokens ``generate`` reads from the model (its ``generation_config``): a causal LM
built from a config takes them from the tokenizer (see :func:`build_causal_lm`)."""


def generation_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """The tokenizer's BOS and EOS ids (None where it has none), for :func:`build_causal_lm`."""
    return {name: getattr(tokenizer, name) for name in GENERATION_TOKENS}


def build_causal_lm(
    backbone: BackboneConfig,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    special_tokens: dict[str, int | None] | None = None,
    load_kwargs: dict | None = None,
) -> PreTrainedModel:
    """A ``*ForCausalLM`` model (its own LM head, frozen like the rest of the backbone).

    ``special_tokens``: the tokenizer's ``bos_token_id``/``eos_token_id`` (see
    :func:`generation_tokens`; None values: the tokenizer has no such token). A ``config``
    backbone takes them into its config and ``generation_config`` (unless its dict sets them), so
    ``generate`` stops at the tokenizer's EOS, not at the model type's default id (Llama: 2, Mamba:
    0), and never early when the tokenizer has no EOS (byte LM). A pretrained backbone keeps its
    own, with a warning when the tokenizer's EOS is not among them. None: the model's own.
    """
    special_tokens = special_tokens or {}
    model = _build(
        AutoModelForCausalLM, backbone, vocab_size, pad_token_id, tokenizer_fields=special_tokens,
        load_kwargs=load_kwargs,
    )  # fmt: skip
    if backbone.config is not None:  # generate reads generation_config: keep it in step
        for name in GENERATION_TOKENS:
            setattr(model.generation_config, name, getattr(model.config, name, None))
    if special_tokens.get("eos_token_id") is not None:
        _warn_on_other_eos(model, special_tokens["eos_token_id"], backbone)
    return model


def _warn_on_other_eos(model: PreTrainedModel, eos_token_id: int, backbone: BackboneConfig) -> None:
    """One warning when generation would not stop at the tokenizer's EOS."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if eos_token_id in ids:
        return
    if backbone.config is not None:
        source, fix = "model.backbone.config", "remove its eos_token_id to use the tokenizer's"
    else:
        source, fix = backbone.name_or_path, "check that model.backbone.tokenizer is its tokenizer"
    rank_zero_warn(
        f"The tokenizer's EOS id {eos_token_id} is not among the EOS ids {ids} of {source}: "
        f"generation stops at the backbone's, not the tokenizer's; {fix}."
    )
