"""Adapters: the method contract, the registry, injection, counting, merging, save and load.

>>> from ssmlora_app.adapters import LoRAConfig, inject_adapters, save_adapter, load_adapter
>>> model = inject_adapters(model, LoRAConfig(r=8, alpha=16, target_modules=["query", "value"]))

Each method lives in its own file, which registers it when imported (see
:mod:`ssmlora_app.adapters.method`); the import lines at the end of this file are the registry of
the built-in methods, one line each.
"""

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.inject import (
    adapter_state_dict,
    count_parameters,
    count_trainable_parameters,
    inject_adapters,
)
from ssmlora_app.adapters.io import load_adapter, read_adapter_config, save_adapter
from ssmlora_app.adapters.merge import merge_adapters, merge_and_unload, unmerge_adapters
from ssmlora_app.adapters.method import AdapterMethod, AdapterState, BenchSettings, Diagnostics
from ssmlora_app.adapters.registry import (
    ADAPTERS,
    adapter_config,
    adapter_diagnostics,
    default_adapter_config,
    generation_context,
    get_method,
    lm_training_loss,
    method_of,
    register_adapter,
)

# The built-in methods: one import each registers it.
from ssmlora_app.adapters.lora import LoRAConfig, LoRALinear  # isort: skip
from ssmlora_app.adapters.ssmlora import SSMLoRAConfig, SSMLoRALinear  # isort: skip
from ssmlora_app.adapters.hrm import HRMConfig, HRMLayer, HRMModalLayer  # isort: skip
from ssmlora_app.adapters.sdt import SDTConfig  # isort: skip
from ssmlora_app.adapters.full import FullFinetuneConfig  # isort: skip
from ssmlora_app.adapters.bitfit import BitFitConfig  # isort: skip
from ssmlora_app.adapters.init_state import InitialStateConfig  # isort: skip
from ssmlora_app.adapters.state_offset import StateOffsetConfig  # isort: skip
from ssmlora_app.adapters.additional_scan import AdditionalScanConfig  # isort: skip
from ssmlora_app.adapters.ssm_prefix import SSMPrefixConfig  # isort: skip
from ssmlora_app.adapters.layer_freeze import LayerFreezeConfig  # isort: skip
from ssmlora_app.adapters.mamba_lora import MambaLoRAConfig  # isort: skip
from ssmlora_app.adapters.peft_adapter import PeftConfig  # isort: skip
from ssmlora_app.adapters.qlora import QLoRAConfig  # isort: skip

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLayer",
    "AdapterMethod",
    "AdapterState",
    "AdditionalScanConfig",
    "BenchSettings",
    "BitFitConfig",
    "Diagnostics",
    "FullFinetuneConfig",
    "HRMConfig",
    "HRMLayer",
    "HRMModalLayer",
    "InitialStateConfig",
    "LayerFreezeConfig",
    "LoRAConfig",
    "LoRALinear",
    "MambaLoRAConfig",
    "PeftConfig",
    "QLoRAConfig",
    "SDTConfig",
    "SSMLoRAConfig",
    "SSMLoRALinear",
    "SSMPrefixConfig",
    "StateOffsetConfig",
    "adapter_config",
    "adapter_diagnostics",
    "adapter_state_dict",
    "count_parameters",
    "count_trainable_parameters",
    "default_adapter_config",
    "generation_context",
    "get_method",
    "inject_adapters",
    "lm_training_loss",
    "load_adapter",
    "merge_adapters",
    "merge_and_unload",
    "method_of",
    "read_adapter_config",
    "register_adapter",
    "save_adapter",
    "unmerge_adapters",
]
