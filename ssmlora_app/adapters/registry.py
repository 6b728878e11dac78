"""Adapter name -> (config class, injector). Adding an adapter is one file plus one line here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.hrm import HRMConfig, inject_hrm
from ssmlora_app.adapters.lora import LoRAConfig, inject_lora, peft_config_fields
from ssmlora_app.adapters.sdt import SDTConfig, inject_sdt
from ssmlora_app.adapters.ssmlora import SSMLoRAConfig, inject_ssmlora
from ssmlora_app.errors import SsmloraError


@dataclass(frozen=True)
class AdapterSpec:
    """How to build one adapter method."""

    config_cls: type[AdapterConfig]
    inject: Callable[[nn.Module, AdapterConfig, list[str]], list[str]]
    """``inject(model, config, skip)`` wraps the target layers (never those under ``skip``) and
    returns their names."""
    peft_fields: Callable[[AdapterConfig], dict] | None = None
    """For methods ``peft`` can load: the ``peft`` config fields written to adapter_config.json."""


ADAPTERS: Mapping[str, AdapterSpec] = MappingProxyType(
    {
        LoRAConfig.adapter_type: AdapterSpec(LoRAConfig, inject_lora, peft_config_fields),
        HRMConfig.adapter_type: AdapterSpec(HRMConfig, inject_hrm),
        SSMLoRAConfig.adapter_type: AdapterSpec(SSMLoRAConfig, inject_ssmlora),
        SDTConfig.adapter_type: AdapterSpec(SDTConfig, inject_sdt),
    }
)


def get_spec(name: str) -> AdapterSpec:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise SsmloraError(
            f"Unknown adapter {name!r}; known adapters: {sorted(ADAPTERS)}."
        ) from None
