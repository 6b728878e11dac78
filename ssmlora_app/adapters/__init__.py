"""Public adapter API: configs, injection, counting, save and load.

>>> from ssmlora_app.adapters import LoRAConfig, inject_adapters, save_adapter, load_adapter
>>> inject_adapters(model, LoRAConfig(r=8, alpha=16, target_modules=["query", "value"]))
"""

from ssmlora_app.adapters.base import AdapterConfig, AdapterLayer
from ssmlora_app.adapters.hrm import (
    HRMConfig,
    HRMLayer,
    HRMModalLayer,
    hrm_diagnostics,
    hrm_generation,
)
from ssmlora_app.adapters.inject import (
    adapter_config,
    adapter_state_dict,
    count_parameters,
    count_trainable_parameters,
    inject_adapters,
    merge_adapters,
    unmerge_adapters,
)
from ssmlora_app.adapters.io import load_adapter, read_adapter_config, save_adapter
from ssmlora_app.adapters.lora import LoRAConfig, LoRALinear
from ssmlora_app.adapters.registry import ADAPTERS
from ssmlora_app.adapters.sdt import SDTConfig, select_dimensions, start_warmup
from ssmlora_app.adapters.ssmlora import SSMLoRAConfig, SSMLoRALinear
from ssmlora_app.adapters.ssmlora_presets import lora_baseline_config
from ssmlora_app.adapters.ssmlora_stats import ssmlora_diagnostics

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLayer",
    "HRMConfig",
    "HRMLayer",
    "HRMModalLayer",
    "LoRAConfig",
    "LoRALinear",
    "SDTConfig",
    "SSMLoRAConfig",
    "SSMLoRALinear",
    "adapter_config",
    "adapter_state_dict",
    "count_parameters",
    "count_trainable_parameters",
    "hrm_diagnostics",
    "hrm_generation",
    "inject_adapters",
    "load_adapter",
    "lora_baseline_config",
    "merge_adapters",
    "read_adapter_config",
    "save_adapter",
    "select_dimensions",
    "ssmlora_diagnostics",
    "start_warmup",
    "unmerge_adapters",
]
