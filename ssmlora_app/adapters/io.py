"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are ``base_model.model.<name in the model>`` as in ``peft``, so a LoRA adapter directory
loads with ``peft.PeftModel.from_pretrained``. Our own config sits under the ``"ssmlora"`` key of
adapter_config.json (``peft`` ignores it). Files are written to a temporary name, then renamed, so
an interrupted save never leaves a truncated file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig
from ssmlora_app.adapters.inject import (
    adapter_config,
    adapter_state_dict,
    default_head,
    inject_adapters,
)
from ssmlora_app.adapters.registry import get_spec
from ssmlora_app.errors import SsmloraError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_adapter(
    model: nn.Module,
    directory: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write the adapter and trained head of ``model`` (not the backbone) to ``directory``.

    ``metadata`` (plain JSON values, e.g. ``{"label_names": [...]}``) is stored beside our config
    under the ``"ssmlora"`` key of adapter_config.json."""
    config = adapter_config(model)
    spec = get_spec(config.adapter_type)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        PREFIX + k: v.detach().to("cpu").contiguous() for k, v in adapter_state_dict(model).items()
    }
    meta: dict = {}
    if spec.peft_fields is not None:
        meta.update(spec.peft_fields(config))
        meta["modules_to_save"] = config.modules_to_save or None
        meta["task_type"] = "SEQ_CLS" if config.modules_to_save else None
        meta["base_model_name_or_path"] = base_model_name_or_path
        meta["inference_mode"] = True
    meta["ssmlora"] = {
        **(metadata or {}),
        "adapter": config.adapter_type,
        "config": dataclasses.asdict(config),
    }
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p))
    _atomic_write(
        directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n")
    )
    return directory


def read_adapter_config(directory: str | os.PathLike) -> AdapterConfig:
    """The :class:`AdapterConfig` saved in ``directory``."""
    path = Path(directory) / CONFIG_NAME
    try:
        meta = json.loads(path.read_text())
        saved = meta["ssmlora"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SsmloraError(
            f"Cannot read adapter config {path}: {err!r}. Expected a directory written by "
            "ssmlora's save_adapter (adapter_config.json + adapter_model.safetensors)."
        ) from None
    spec = get_spec(saved["adapter"])
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    return spec.config_cls(**{k: v for k, v in saved["config"].items() if k in fields})


def read_adapter_weights(directory: str | os.PathLike) -> dict:
    """The saved tensors of ``directory``, keyed by their names in the model."""
    path = Path(directory) / WEIGHTS_NAME
    try:
        tensors = load_file(path)
    except Exception as err:  # safetensors raises several types for missing/corrupt files
        raise SsmloraError(f"Cannot read adapter weights {path}: {err}.") from None
    return {k.removeprefix(PREFIX): v for k, v in tensors.items()}


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, load_head: bool = True
) -> nn.Module:
    """Load a saved adapter into ``model``, injecting it first if ``model`` has none.

    Every adapter tensor must be present with the right shape; the head (``modules_to_save`` and
    the top-level ``classifier``/``score``/``pooler``, adapted or not) is loaded when
    ``load_head``, else left as it is (e.g. a new head for another task). Returns ``model``.
    """
    saved = read_adapter_config(directory)
    if not hasattr(model, "ssmlora_config"):
        inject_adapters(model, saved)
    current = adapter_config(model)
    if current.adapter_type != saved.adapter_type:
        raise SsmloraError(
            f"{directory} holds a {saved.adapter_type!r} adapter but the model has "
            f"{current.adapter_type!r}."
        )
    tensors = read_adapter_weights(directory)
    expected = adapter_state_dict(model)
    # The head: fully trained modules, and the top-level head modules an adapter may wrap
    # (SSMLoRA's full_model preset adapts the classifier's linears).
    heads = set(current.modules_to_save or []) | set(default_head(model))
    problems = []
    to_load = {}
    for key, target in expected.items():
        is_head = any(key.startswith(h + ".") for h in heads)
        if is_head and not load_head:
            continue
        if key not in tensors:
            problems.append(f"missing {key}")
        elif tensors[key].shape != target.shape:
            problems.append(
                f"{key}: saved {tuple(tensors[key].shape)}, model {tuple(target.shape)}"
            )
        else:
            to_load[key] = tensors[key]
    if problems:
        raise SsmloraError(
            f"Adapter in {directory} does not fit this model ({len(problems)} problems): "
            + "; ".join(problems[:5])
        )
    model.load_state_dict(to_load, strict=False)
    return model
