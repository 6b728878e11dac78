"""QLoRA (Dettmers et al. 2023, arXiv 2305.14314): the frozen backbone in 4-bit NormalFloat
(bitsandbytes), LoRA on top in fp32.

The QLoRA paper's recipe (§3): every frozen linear stored as 4-bit NF4 with double quantisation of
its block constants and dequantised to ``compute_dtype`` (bf16) for each product; the LoRA factors
(:class:`~ssmlora_app.adapters.lora.LoRALinear`, the same layer as LoRA's) stay fp32 and train.
The method changes how the backbone loads (its ``backbone_kwargs`` hook: transformers'
``BitsAndBytesConfig``), so it needs a CUDA GPU and the ``bitsandbytes`` package; without either,
a run stops with one line before any weight is read. A 4-bit base cannot take a merged update:
the adapter folder (``peft``'s LoRA layout, loadable onto a 4-bit or a full-precision base) is the
export.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.lora import LoRAConfig, add_lora, peft_config_fields
from ssmlora_app.adapters.method import AdapterMethod, BenchSettings
from ssmlora_app.adapters.registry import register_adapter
from ssmlora_app.adapters.targets import find_config_targets
from ssmlora_app.errors import SsmloraError

COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class QLoRAConfig(LoRAConfig):
    """QLoRA: LoRA on a backbone loaded in 4 bits (GPU with bitsandbytes only)."""

    adapter_type: ClassVar[str] = "qlora"

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type of the frozen weights: NormalFloat (the QLoRA paper's) or plain FP4."""

    double_quant: bool = True
    """Quantise the quantisation constants too (the QLoRA paper's double quantisation, ~0.4
    bit/parameter saved)."""

    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Dtype the 4-bit weights are dequantised to for each product (the paper: bfloat16)."""

    def validate(self) -> None:
        super().validate()
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise SsmloraError(
                f"QLoRA compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got "
                f"{self.compute_dtype!r}."
            )


def require_4bit() -> None:
    """Raise :class:`SsmloraError` unless 4-bit loading can work here (CUDA and bitsandbytes)."""
    if not torch.cuda.is_available():
        raise SsmloraError(
            "QLoRA loads the backbone in 4 bits with bitsandbytes, which needs a CUDA GPU; none "
            "is available here. Use LoRA (lora) on CPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SsmloraError("QLoRA needs the bitsandbytes package: pip install bitsandbytes.")


def qlora_backbone_kwargs(config: QLoRAConfig) -> dict:
    """``from_pretrained`` arguments: the 4-bit quantisation config, on this process's GPU."""
    require_4bit()
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[config.compute_dtype],
    )
    device = int(os.environ.get("LOCAL_RANK", 0))  # each DDP process on its own GPU
    return {"quantization_config": quantization, "device_map": {"": device}}


def _is_4bit(module: nn.Module) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return isinstance(module, bnb.nn.Linear4bit)


def inject_qlora(model: nn.Module, config: QLoRAConfig, skip: Sequence[str]) -> list[str]:
    """LoRA (the wrap mechanism) on every 4-bit target linear; a target that is not 4-bit means
    the backbone was not loaded through this method, which is refused."""
    names = find_config_targets(model, config, skip)
    plain = [name for name in names if not _is_4bit(model.get_submodule(name))]
    if plain:
        raise SsmloraError(
            f"QLoRA: {plain[0]} is not a 4-bit layer, so the backbone was not loaded in 4 bits "
            "(QLoRA needs model.backbone.name_or_path and a CUDA GPU; a config backbone has no "
            "weights to quantise). Use lora for a full-precision backbone."
        )
    add_lora(model, names, config.r, config.alpha, config.dropout, config.use_rslora, False)
    return names


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    raise SsmloraError("QLoRA needs a pretrained backbone loaded in 4 bits on a GPU")


register_adapter(
    AdapterMethod(
        QLoRAConfig,
        inject_qlora,
        mergeable=False,  # a 4-bit weight cannot hold the merged update
        peft_config=peft_config_fields,
        backbone_kwargs=qlora_backbone_kwargs,
        bench=_bench,
    )
)
