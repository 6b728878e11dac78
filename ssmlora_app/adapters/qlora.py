"""QLoRA (Dettmers et al. 2023, arXiv 2305.14314): the frozen backbone in 4-bit NormalFloat
(bitsandbytes), LoRA on top in fp32.

The QLoRA paper's recipe (§3): every frozen linear stored as 4-bit NF4 with double quantisation of
its block constants and dequantised to ``compute_dtype`` (bf16) for each product; the LoRA factors
(:class:`~ssmlora_app.adapters.lora.LoRALinear`, the same layer as LoRA's) stay fp32 and train.
The method changes how the backbone loads (its ``backbone_kwargs`` hook: transformers'
``BitsAndBytesConfig``), so it needs the ``bitsandbytes`` package and a CUDA GPU, or, with
``allow_cpu``, bitsandbytes' CPU kernels (slower than LoRA in fp32: for checking a QLoRA set-up on
a machine without a GPU); without them a run stops with one line before any weight is read. A
4-bit base cannot take a merged update: the adapter folder (``peft``'s LoRA layout, loadable onto
a 4-bit or a full-precision base) is the export.
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
    """QLoRA: LoRA on a backbone loaded in 4 bits (bitsandbytes; a GPU, or the CPU if allowed)."""

    adapter_type: ClassVar[str] = "qlora"

    quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type of the frozen weights: NormalFloat (the QLoRA paper's) or plain FP4."""

    double_quant: bool = True
    """Quantise the quantisation constants too (the QLoRA paper's double quantisation, ~0.4
    bit/parameter saved)."""

    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Dtype the 4-bit weights are dequantised to for each product (the paper: bfloat16)."""

    allow_cpu: bool = False
    """Without a CUDA GPU, load and train the 4-bit backbone on the CPU with bitsandbytes' CPU
    kernels (slower than LoRA on the fp32 model: for checking a QLoRA set-up without a GPU).
    Off: QLoRA on a machine without a GPU stops before anything loads."""

    def validate(self) -> None:
        super().validate()
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise SsmloraError(
                f"QLoRA compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got "
                f"{self.compute_dtype!r}."
            )


def require_4bit(config: QLoRAConfig) -> str | int:
    """The device the 4-bit backbone loads on (this process's GPU, or ``"cpu"`` where the
    config allows it); :class:`SsmloraError` where 4-bit loading cannot work here."""
    if not torch.cuda.is_available() and not config.allow_cpu:
        raise SsmloraError(
            "QLoRA loads the backbone in 4 bits with bitsandbytes, which needs a CUDA GPU; none "
            "is available here. Use LoRA (lora) on CPU, or set the adapter's allow_cpu: true to "
            "run bitsandbytes' (slower) CPU kernels."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SsmloraError("QLoRA needs the bitsandbytes package: pip install bitsandbytes.")
    if torch.cuda.is_available():
        return int(os.environ.get("LOCAL_RANK", 0))  # each DDP process on its own GPU
    _require_cpu_kernels()
    return "cpu"


def _require_cpu_kernels() -> None:
    """Quantise a small matrix on the CPU: older bitsandbytes releases have no CPU kernels."""
    import bitsandbytes.functional as bnbf

    try:
        packed, state = bnbf.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
        bnbf.dequantize_4bit(packed, state)
    except Exception as err:  # a missing kernel surfaces as NotImplementedError/RuntimeError
        import bitsandbytes

        raise SsmloraError(
            f"QLoRA allow_cpu: bitsandbytes {bitsandbytes.__version__} has no CPU kernels for "
            f"4-bit layers ({type(err).__name__}); install bitsandbytes>=0.50 (the version tested) or use a GPU."
        ) from None


def qlora_backbone_kwargs(config: QLoRAConfig) -> dict:
    """``from_pretrained`` arguments: the 4-bit quantisation config, on this process's GPU (or
    the CPU where the config allows it)."""
    device = require_4bit(config)
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=COMPUTE_DTYPES[config.compute_dtype],
    )
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
            "(QLoRA needs model.backbone.name_or_path; a config backbone has no weights to "
            "quantise). Use lora for a full-precision backbone."
        )
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            # bitsandbytes repacks a 4-bit weight for its CPU inference kernel the first time the
            # layer runs in eval mode, and that kernel has no backward: training after a
            # validation pass would back-propagate wrong gradients. Keep the trainable layout.
            module.support_avx512bf16_for_cpu = False
    add_lora(model, names, config.r, config.alpha, config.dropout, config.use_rslora, False)
    return names


def _bench(model: nn.Module, settings: BenchSettings) -> dict[str, AdapterConfig]:
    raise SsmloraError("QLoRA needs a pretrained backbone loaded in 4 bits")


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
