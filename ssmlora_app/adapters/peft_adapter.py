"""Any ``peft`` method on a transformer backbone, through the app's own fit, validate, predict,
export, sweep, report and bench: prompt tuning (Lester et al. 2021), prefix tuning (Li & Liang
2021), P-tuning (Liu et al. 2021), (IA)³ (Liu et al. 2022), AdaLoRA (Zhang et al. 2023), LoHa,
LoKr, VeRA (Kopiczko et al. 2024), LoRA and DoRA (Liu et al. 2024, ``use_dora``), ...

``peft_config`` holds ``peft``'s own fields, ``peft_type`` included, exactly as ``peft``'s
``get_peft_config`` takes them::

    model:
      adapter:
        class_path: ssmlora_app.adapters.PeftConfig
        init_args:
          peft_config: {peft_type: ADALORA, init_r: 12, target_r: 8, target_modules: [query, value]}

``task_type`` comes from the objective (``SEQ_CLS`` for a classifier, ``CAUSAL_LM`` for a causal
LM); the task head is peft's ``modules_to_save`` (this config's ``modules_to_save``, default the
model's ``classifier``/``score``). The model is ``peft``'s, wrapped by
:class:`~ssmlora_app.adapters.peft_wrapper.PeftAdapted` (virtual tokens dropped from the logits,
greedy KV-cached generation), and the adapter folder is ``peft``'s layout:
``PeftModel.from_pretrained`` loads it. AdaLoRA's budget allocation (``update_and_allocate``)
runs after every optimizer step (:class:`AdaLoRABudget`, the method's callback); its
``total_step`` defaults to the run's optimizer steps. Mergeable where ``peft`` merges (the
LoRA family, (IA)³, ...), refused for prompt learning.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
from torch import nn
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.peft_wrapper import (
    ADAPTER_NAME,
    PEFT_STATE,
    PeftAdapted,
    folder_config,
    merge_wrapper,
)
from ssmlora_app.adapters.registry import CONFIG_ATTR, register_adapter
from ssmlora_app.errors import SsmloraError

TARGETING = ("target_modules", "layers_to_transform", "layers_pattern", "exclude_modules")
"""Our targeting fields; given here, they go into ``peft``'s config (its fields of those names)."""

TASK_TYPES = ("SEQ_CLS", "CAUSAL_LM")
"""The ``peft`` task types of the app's objectives (set from the model)."""

NOT_MERGEABLE = ("ADAPTION_PROMPT", "POLY", "XLORA", "CARTRIDGE", "CPT")
"""Non-prompt-learning ``peft`` types without a merge into the weights."""


def _peft():
    try:
        import peft
    except ImportError:
        raise SsmloraError(
            "The peft adapter needs the peft package: pip install 'peft>=0.13'."
        ) from None
    return peft


@dataclass
class PeftConfig(AdapterConfig):
    """Any ``peft`` method: ``peft_config`` holds ``peft``'s own fields (with ``peft_type``)."""

    adapter_type: ClassVar[str] = "peft"

    peft_config: dict[str, Any] = field(
        default_factory=lambda: {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 20}
    )
    """``peft``'s config fields, ``peft_type`` first (PROMPT_TUNING, PREFIX_TUNING, P_TUNING, IA3,
    ADALORA, LOHA, LOKR, VERA, LORA with ``use_dora: true`` for DoRA, ...), as ``peft``'s
    ``get_peft_config`` takes them. ``task_type`` is set from the objective; the head is this
    config's ``modules_to_save``; AdaLoRA's ``total_step`` may be left out (the run's optimizer
    steps). Our ``target_modules``/``layers_to_transform``/``layers_pattern``/
    ``exclude_modules``, when given, are copied into it."""

    def fields(self, task_type: str = "SEQ_CLS", heads: Sequence[str] | None = None) -> dict:
        """``peft``'s fields for a model of ``task_type`` whose head is ``heads``."""
        fields = copy.deepcopy(dict(self.peft_config))
        for name in TARGETING:
            value = getattr(self, name)
            if value is None:
                continue
            if fields.get(name) not in (None, value):
                raise SsmloraError(
                    f"peft adapter: {name} is given twice (in the adapter's config and in "
                    "peft_config) with different values; give it once."
                )
            fields[name] = value
        fields["task_type"] = task_type
        if heads:
            fields["modules_to_save"] = list(heads)
        if fields.get("peft_type") == "ADALORA" and fields.get("total_step") is None:
            # a placeholder the schedule accepts; AdaLoRABudget sets the run's steps at fit start
            fields["total_step"] = fields.get("tinit", 0) + fields.get("tfinal", 0) + 1
        return fields

    def build(self, task_type: str = "SEQ_CLS", heads: Sequence[str] | None = None):
        """``peft``'s config object (raises :class:`SsmloraError` for a bad field)."""
        peft = _peft()
        fields = self.fields(task_type, heads)
        try:
            return peft.get_peft_config(fields)
        except (TypeError, ValueError, KeyError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise SsmloraError(f"peft adapter: peft_config {self.peft_config}: {message}") from None

    @property
    def peft_type(self) -> str:
        return str(self.peft_config.get("peft_type", ""))

    def validate(self) -> None:
        peft = _peft()
        known = sorted(peft.PeftType.__members__)
        if self.peft_type not in known:
            raise SsmloraError(
                f"peft adapter: peft_config needs a peft_type among {known}, got "
                f"{self.peft_config.get('peft_type')!r}."
            )
        task = self.peft_config.get("task_type")
        if task is not None and task not in TASK_TYPES:
            raise SsmloraError(
                f"peft adapter: task_type {task!r} is not one of this app's objectives "
                f"{TASK_TYPES}; leave it out (it is set from the objective)."
            )
        for name in ("modules_to_save", "inference_mode"):
            if name in self.peft_config:
                raise SsmloraError(
                    f"peft adapter: leave {name} out of peft_config (the head is the adapter's "
                    "modules_to_save; the training mode is the run's)."
                )
        self.build()


def _is_causal_lm(model: nn.Module) -> bool:
    return isinstance(model, PreTrainedModel) and model.can_generate()


def _takes_past_key_values(model: PreTrainedModel) -> bool:
    """What ``peft``'s prefix tuning needs of a classifier: its forward (or its backbone's)
    takes a KV cache."""
    names = ("past_key_values",)  # what peft looks for
    forwards = [model.forward, getattr(model.base_model, "forward", model.forward)]
    return any(n in inspect.signature(f).parameters for f in forwards for n in names)


def _check_applies(model: nn.Module, config, task_type: str) -> None:
    """Refuse, with one line, what ``peft`` would do wrong or fail at on this model."""
    if not isinstance(model, PreTrainedModel):
        raise SsmloraError(
            f"peft adapters need a transformers model; {type(model).__name__} is not one (Mamba "
            "classifiers: use the lora, sdt or SSM-specific adapters)."
        )
    if task_type != "SEQ_CLS" or not config.is_prompt_learning:
        return
    if config.peft_type == "PREFIX_TUNING" and not _takes_past_key_values(model):
        raise SsmloraError(
            f"peft PREFIX_TUNING needs a backbone that takes past keys and values; "
            f"{type(model).__name__} does not in this transformers version (its encoders and "
            "sequence classifiers dropped them). Use PROMPT_TUNING or P_TUNING, or a causal LM "
            "(data.objective: causal_lm)."
        )
    if model.config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise SsmloraError(
            f"peft {config.peft_type.value} on a {model.config.model_type} sequence classifier: peft "
            "feeds it embeddings only, and a decoder's head then pools the last position, a pad "
            "token for right-padded rows. Use a LoRA-family peft method, or the causal-LM "
            "objective (data.objective: causal_lm)."
        )


def inject_peft(model: nn.Module, config: PeftConfig, skip: Sequence[str]) -> list[str]:
    """Nothing is injected here: :func:`wrap_peft` builds the peft model (which injects)."""
    return []


def wrap_peft(model: nn.Module, config: PeftConfig) -> PeftAdapted:
    """``peft.get_peft_model`` on ``model`` (frozen, its head unfrozen by ``inject_adapters``),
    wrapped for the objectives."""
    peft = _peft()
    task_type = "CAUSAL_LM" if _is_causal_lm(model) else "SEQ_CLS"
    heads = getattr(model, CONFIG_ATTR).modules_to_save or []
    built = config.build(task_type, heads)
    _check_applies(model, built, task_type)
    try:
        peft_model = peft.get_peft_model(model, built, adapter_name=ADAPTER_NAME)
    except (ValueError, TypeError, KeyError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise SsmloraError(
            f"peft {config.peft_type} on {type(model).__name__}: {message}"
        ) from None
    for name, param in peft_model.named_parameters():
        if ".ranknum." in name:  # AdaLoRA's constant rank (its flag comes back on on meta)
            param.requires_grad_(False)
    return PeftAdapted(peft_model)


def _mergeable(config: PeftConfig) -> bool:
    built = config.build()
    return not built.is_prompt_learning and config.peft_type not in NOT_MERGEABLE


def _identity_at_init(config: PeftConfig) -> bool:
    """Prompt learning adds tokens from the start; peft's other methods start at zero effect."""
    return not config.build().is_prompt_learning


def _virtual_tokens(config: PeftConfig) -> int:
    built = config.build()
    return int(built.num_virtual_tokens or 0) if built.is_prompt_learning else 0


class AdaLoRABudget(L.Callback):
    """AdaLoRA's rank allocation (AdaLoRA paper §3.2, Algorithm 1): ``update_and_allocate`` after
    every optimizer step, while the step's gradients are still there (Lightning zeroes them
    before the next backward). ``total_step`` left out of ``peft_config`` becomes the run's
    optimizer steps when fit starts."""

    def __init__(self, total_step_given: bool):
        self.total_step_given = total_step_given
        self._done = 0
        """Optimizer steps already handed to the allocator (accumulated batches make fewer)."""

    @staticmethod
    def _tuner(pl_module: L.LightningModule):
        return pl_module.model.peft_model.base_model

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done = trainer.global_step
        if self.total_step_given:
            return
        config = pl_module.model.active_config
        steps = int(trainer.estimated_stepping_batches)
        if config.tinit >= steps - config.tfinal:
            raise SsmloraError(
                f"AdaLoRA: tinit={config.tinit} and tfinal={config.tfinal} leave no budgeting "
                f"phase in this run's {steps} optimizer steps; lower them or train longer."
            )
        config.total_step = steps
        self._tuner(pl_module).rankallocator.set_total_step(steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        while self._done < trainer.global_step:  # one call per optimizer step just taken
            self._tuner(pl_module).update_and_allocate(self._done)
            self._done += 1


def _callbacks(config: PeftConfig) -> list:
    if config.peft_type != "ADALORA":
        return []
    return [AdaLoRABudget(total_step_given=config.peft_config.get("total_step") is not None)]


def _peft_fields(model: nn.Module, config: PeftConfig) -> dict:
    return folder_config(model)


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    """One row per peft family on the preset's targets (prompt learning where it applies)."""
    if not isinstance(model, PreTrainedModel):
        raise SsmloraError("peft adapters need a transformers model (not the Mamba classifier).")
    targets = list(settings.targets)
    rows = {
        "peft_ia3": {"peft_type": "IA3", "target_modules": targets, "feedforward_modules": []},
        "peft_dora": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True,
                      "target_modules": targets},
        "peft_adalora": {"peft_type": "ADALORA", "init_r": 12, "target_r": 8, "lora_alpha": 16,
                         "total_step": 1000, "target_modules": targets},
        "peft_loha": {"peft_type": "LOHA", "r": 8, "alpha": 16, "target_modules": targets},
        "peft_lokr": {"peft_type": "LOKR", "r": 8, "alpha": 16, "target_modules": targets},
        "peft_vera": {"peft_type": "VERA", "r": 256, "target_modules": targets},
    }  # fmt: skip
    if model.config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # pools the first token
        rows["peft_prompt_tuning"] = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 20}
        rows["peft_p_tuning"] = {"peft_type": "P_TUNING", "num_virtual_tokens": 20,
                                 "encoder_hidden_size": 128}  # fmt: skip
    return {row: PeftConfig(peft_config=fields) for row, fields in rows.items()}


register_adapter(
    AdapterMethod(
        PeftConfig,
        inject_peft,
        mergeable=_mergeable,
        identity_at_init=_identity_at_init,
        peft_config=_peft_fields,
        wrap_model=wrap_peft,
        state=PEFT_STATE,
        merge=merge_wrapper,
        virtual_tokens=_virtual_tokens,
        callbacks=_callbacks,
        bench=_bench,
    )
)
