"""The model a ``peft`` adapter trains as: :class:`PeftAdapted`, a thin module around a
``peft.PeftModel`` that the objectives can drive like any other adapted model.

``peft``'s prompt-learning methods put virtual tokens in front of the input (prompt tuning, Lester
et al. 2021; P-tuning, Liu et al. 2021) or in front of every layer's keys and values (prefix
tuning, Li & Liang 2021). Two things then differ from a plain causal LM, and this wrapper puts
them right so every objective reads the numbers it expects:

* **Logits.** ``PeftModelForCausalLM`` returns logits for the virtual tokens too, ``(B, n + L,
  V)``; :meth:`PeftAdapted.forward` drops the first ``n``, so position ``t`` scores token
  ``t + 1`` of the input as without an adapter (the loss ``peft`` computes is unchanged: it
  already masks the virtual positions).
* **Generation.** Greedy decoding with a KV cache runs here (:meth:`PeftAdapted.generate`): the
  prompt (or prefix) fills the cache once, then one token per step, each step equal to the full
  forward of the whole sequence (a test). ``peft``'s own ``generate`` is used for the other
  methods, which add no tokens.

The adapter's tensors and its folder (:data:`PEFT_STATE`): checkpoints keep the wrapper's own
tensors (every trainable parameter and every tensor of ``peft``'s adapter, named with the adapter
name ``default``); the adapter folder is ``peft``'s layout (``get_peft_model_state_dict``), so
``PeftModel.from_pretrained`` loads it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from ssmlora_app.adapters.method import AdapterState
from ssmlora_app.errors import SsmloraError

ADAPTER_NAME = "default"
"""``peft``'s name of the one adapter the wrapper trains."""

ENCODER_OUTPUT_TYPES = ("P_TUNING", "PREFIX_TUNING")
"""Prompt-learning methods whose saved ``prompt_embeddings`` are their prompt encoder's output
(P-tuning always, prefix tuning with ``prefix_projection``), not its weights."""


class PeftAdapted(nn.Module):
    """A ``peft.PeftModel`` as the model of a run: its forward with the virtual-token logits
    dropped, and greedy KV-cached generation for prompt-learning methods. Other attributes
    (``config``, ``generation_config``, ``gradient_checkpointing_enable``, ...) are the peft
    model's, hence the backbone's."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft_model = peft_model

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.peft_model, name)

    @property
    def active_config(self):
        """``peft``'s config of the adapter (a ``peft.PeftConfig``)."""
        return self.peft_model.peft_config[ADAPTER_NAME]

    @property
    def virtual_tokens(self) -> int:
        """Positions a prompt-learning method adds in front of the input (0 for the others)."""
        config = self.active_config
        return config.num_virtual_tokens if config.is_prompt_learning else 0

    def forward(self, **inputs: Any):
        out = self.peft_model(**inputs)
        n = self.virtual_tokens
        ids = inputs.get("input_ids")
        logits = getattr(out, "logits", None)
        # prompt tuning and P-tuning on a causal LM: logits for the n virtual tokens come first
        prepended = logits is not None and logits.dim() == 3 and ids is not None
        if n and prepended and logits.shape[1] == ids.shape[1] + n:
            out["logits"] = logits[:, n:]
        return out

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        **kwargs: Any,
    ) -> Tensor:
        """Greedy continuations ``(B, L + T)`` (the prompt, then up to ``max_new_tokens``), as
        transformers' ``generate``. Prompt-learning methods decode here (``do_sample`` must be
        false; ``pad_token_id`` fills finished rows); the others through ``peft``."""
        if not self.active_config.is_prompt_learning:
            return self.peft_model.generate(
                input_ids=input_ids, attention_mask=attention_mask,
                max_new_tokens=max_new_tokens, do_sample=do_sample, **kwargs,
            )  # fmt: skip
        if do_sample:
            raise SsmloraError("peft prompt-learning adapters generate greedily only here.")
        pad = kwargs.get("pad_token_id")
        return greedy_decode(self, input_ids, attention_mask, max_new_tokens, pad)


def _cache_name(model: nn.Module) -> str:
    """What ``model.forward`` calls its KV cache: ``cache`` (transformers ≥ 5.2x) or
    ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _eos_ids(model: nn.Module) -> Tensor:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return torch.tensor(eos, dtype=torch.long)


def greedy_decode(
    wrapper: PeftAdapted,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    max_new_tokens: int,
    pad_token_id: int | None,
) -> Tensor:
    """Greedy decoding of a prompt-learning peft model with a KV cache.

    ``input_ids, attention_mask (B, L)``. Prefill: the virtual tokens' embeddings and the prompt's
    (prompt tuning, P-tuning), or the prompt over the prefix's keys and values (prefix tuning),
    with an attention mask of ``n + L`` ones in front; then one token per step on the cache. Each
    row stops at the backbone's EOS (``generation_config.eos_token_id``); the result is ``(B, L +
    T)``, ``T ≤ max_new_tokens``, rows that ended early padded with ``pad_token_id``."""
    peft_model = wrapper.peft_model
    config = wrapper.active_config
    base = peft_model.get_base_model()
    cache_arg = _cache_name(base)
    batch, device = input_ids.shape[0], input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    virtual = torch.ones(batch, config.num_virtual_tokens, dtype=mask.dtype, device=device)
    mask = torch.cat([virtual, mask], dim=1)  # (B, n + L)
    if config.peft_type == "PREFIX_TUNING":
        prefix = peft_model.get_prompt(batch_size=batch)  # the n prefix keys/values of each layer
        out = base(input_ids=input_ids, attention_mask=mask, use_cache=True, **{cache_arg: prefix})
    else:
        embeds = peft_model.word_embeddings(input_ids)  # (B, L, D)
        prompts = peft_model.get_prompt(batch_size=batch).to(embeds.dtype)  # (B, n, D)
        out = base(inputs_embeds=torch.cat([prompts, embeds], 1), attention_mask=mask,
                   use_cache=True)  # fmt: skip
    eos = _eos_ids(wrapper).to(device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens = []
    for step in range(max_new_tokens):
        cache = out[cache_arg] if cache_arg in out else out["past_key_values"]
        chosen = out.logits[:, -1].argmax(-1)  # (B,)
        if pad_token_id is not None:
            chosen = torch.where(finished, torch.full_like(chosen, pad_token_id), chosen)
        tokens.append(chosen)
        finished |= torch.isin(chosen, eos)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        out = base(input_ids=chosen[:, None], attention_mask=mask, use_cache=True,
                   **{cache_arg: cache})  # fmt: skip
    if not tokens:
        return input_ids
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)


# ---- the adapter's tensors and its folder ---------------------------------------------------


def adapter_tensors(wrapper: nn.Module) -> dict[str, Tensor]:
    """The wrapper's adapter tensors, keyed by their names in it: every trainable parameter and
    every tensor ``peft`` files under the adapter's name (``...lora_A.default.weight``, the
    trained head copy ``...modules_to_save.default...``, ``prompt_encoder.default...``); never a
    backbone weight nor the head's frozen original."""
    infix, suffix = f".{ADAPTER_NAME}.", f".{ADAPTER_NAME}"
    return {
        key: tensor.detach()
        for key, tensor in wrapper.state_dict(keep_vars=True).items()
        if (isinstance(tensor, nn.Parameter) and tensor.requires_grad)
        or infix in key
        or key.endswith(suffix)
    }


def folder_tensors(wrapper: PeftAdapted) -> dict[str, Tensor]:
    """adapter_model.safetensors in ``peft``'s layout (keys without the adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(wrapper.peft_model, adapter_name=ADAPTER_NAME)


def folder_config(wrapper: PeftAdapted) -> dict:
    """``peft``'s adapter_config.json fields of the trained adapter (as ``save_pretrained``
    writes them: AdaLoRA's ``rank_pattern`` and ``total_step`` as trained)."""
    fields = wrapper.active_config.to_dict()
    pattern = fields.get("rank_pattern")
    if pattern:  # peft saves the AdaLoRA pattern without the adapter name
        fields["rank_pattern"] = {k.replace(f".{ADAPTER_NAME}", ""): v for k, v in pattern.items()}
    return json.loads(json.dumps(fields, default=_json_value))


def _json_value(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value.value) if hasattr(value, "value") else str(value)


def load_folder(
    wrapper: PeftAdapted, meta: Mapping[str, Any], tensors: dict[str, Tensor], load_head: bool
) -> None:
    """Put a ``peft``-layout folder's tensors into ``wrapper`` (injected with the folder's
    config). Every tensor ``peft`` would save for this model must be there; the head's are
    skipped without ``load_head``."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    peft_model, config = wrapper.peft_model, wrapper.active_config
    if meta.get("rank_pattern") and hasattr(config, "rank_pattern"):  # AdaLoRA's final ranks
        config.rank_pattern = dict(meta["rank_pattern"])
    if config.is_prompt_learning and _holds_encoder_output(config, tensors):
        _freeze_prompt_as_saved(wrapper)
    expected = set(get_peft_model_state_dict(peft_model, adapter_name=ADAPTER_NAME))
    if not load_head:
        heads = tuple(f"base_model.model.{h}." for h in config.modules_to_save or ())
        expected = {k for k in expected if not k.startswith(heads)}
        tensors = {k: v for k, v in tensors.items() if not k.startswith(heads)}
    missing = sorted(expected - set(tensors))
    if missing:
        raise SsmloraError(
            f"The peft adapter folder lacks {len(missing)} tensors this model needs (e.g. "
            f"{missing[0]}): it was saved from another model or adapter configuration."
        )
    try:
        set_peft_model_state_dict(peft_model, tensors, adapter_name=ADAPTER_NAME)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        raise SsmloraError(f"The peft adapter folder does not fit this model: {first}") from None


def _holds_encoder_output(config, tensors: Mapping[str, Tensor]) -> bool:
    """The folder's ``prompt_embeddings`` are the prompt encoder's output (P-tuning; prefix
    tuning with ``prefix_projection``), while the model still has the encoder's weights."""
    if config.inference_mode or config.peft_type not in ENCODER_OUTPUT_TYPES:
        return False
    return config.peft_type == "P_TUNING" or bool(getattr(config, "prefix_projection", False))


def _freeze_prompt_as_saved(wrapper: PeftAdapted) -> None:
    """Rebuild the prompt encoder in ``peft``'s inference layout (one embedding table holding its
    output, as ``PeftModel.from_pretrained`` does), frozen."""
    peft_model, config = wrapper.peft_model, wrapper.active_config
    old = peft_model.prompt_encoder[ADAPTER_NAME]
    device = next(old.parameters()).device
    config.inference_mode = True
    encoder = type(old)(config).to(device).requires_grad_(False)
    peft_model.prompt_encoder[ADAPTER_NAME] = encoder
    rank_zero_warn(
        f"peft {config.peft_type.value} folders hold the prompt encoder's output (peft's layout): it "
        "is loaded frozen, as peft loads it. To train the encoder further, resume from the "
        "run's checkpoint, which keeps its weights."
    )


def merge_wrapper(wrapper: PeftAdapted) -> nn.Module:
    """``peft``'s merge-and-unload: the plain backbone with the adapter folded in. The trained
    head copies (``modules_to_save``) are put in place of the originals first: ``peft``'s own
    unloading fails on a composite head (RoBERTa's ``classifier``) for some methods ((IA)³)."""
    from peft.utils import ModulesToSaveWrapper

    model = wrapper.peft_model.get_base_model()
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, leaf = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, leaf, module.modules_to_save[ADAPTER_NAME])
    return wrapper.peft_model.merge_and_unload()


PEFT_STATE = AdapterState(tensors=adapter_tensors, save=folder_tensors, load=load_folder)
"""The peft method's tensors and folder layout (see :class:`AdapterState`)."""
