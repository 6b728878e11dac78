"""Adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are ``base_model.model.<name in the model>`` as in ``peft``, so a LoRA adapter directory
loads with ``peft.PeftModel.from_pretrained``. Our own config sits under the ``"ssmlora"`` key of
adapter_config.json (``peft`` ignores it). :func:`write_adapter_folder` is the one writer of such
a folder (``save_adapter`` and ``ssmlora reduce`` use it): each file is written atomically (see
:mod:`ssmlora_app.atomic`), so an interrupted save never leaves a truncated file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ssmlora_app.adapters.base import AdapterConfig, shape_mismatches
from ssmlora_app.adapters.inject import adapter_state_dict, default_head, inject_adapters
from ssmlora_app.adapters.registry import adapter_config, get_method, has_adapter, method_of
from ssmlora_app.atomic import atomic_write, atomic_write_text
from ssmlora_app.errors import SsmloraError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."


def config_record(config: AdapterConfig, metadata: Mapping | None = None) -> dict:
    """Our part of adapter_config.json (the ``"ssmlora"`` key): the adapter type, its config and
    any ``metadata`` (plain JSON values, e.g. ``{"label_names": [...]}``)."""
    return {
        **(metadata or {}),
        "adapter": config.adapter_type,
        "config": dataclasses.asdict(config),
    }


def write_adapter_folder(
    directory: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    meta: dict,
    extra_json: Mapping[str, object] | None = None,
    prefix: str = PREFIX,
) -> Path:
    """Write an adapter folder: ``tensors`` (keyed by their names in the model, stored under
    ``prefix``) as adapter_model.safetensors, ``meta`` as adapter_config.json, and each of
    ``extra_json`` (file name -> JSON value, e.g. a reduction report) beside them; every file
    atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # Adapters are stored in float32 whatever trainer.precision trained them in (64-true too).
    weights = {
        prefix + k: v.detach()
        .to("cpu", torch.float32 if v.dtype == torch.float64 else v.dtype)
        .contiguous()
        for k, v in tensors.items()
    }
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(weights, p))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
    for name, value in (extra_json or {}).items():
        atomic_write_text(directory / name, json.dumps(value, indent=2) + "\n")
    return directory


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
    method = method_of(model)
    meta: dict = {}
    peft = method.peft_config(model, config) if method.peft_config is not None else None
    if peft is not None:  # peft's own fields first; ours fill what it leaves out
        meta.update(peft)
        meta.setdefault("modules_to_save", config.modules_to_save or None)
        meta.setdefault("task_type", _peft_task_type(config.modules_to_save or []))
        if base_model_name_or_path is not None or "base_model_name_or_path" not in meta:
            meta["base_model_name_or_path"] = base_model_name_or_path
        meta["inference_mode"] = True
    meta["ssmlora"] = config_record(config, metadata)
    if method.state is not None:  # a wrapper's own layout (e.g. peft's keys)
        return write_adapter_folder(directory, method.state.save(model), meta, prefix="")
    return write_adapter_folder(directory, adapter_state_dict(model), meta)


def _peft_task_type(heads: list[str]) -> str | None:
    """peft's ``task_type`` for a model with these fully trained heads: ``QUESTION_ANS`` for a
    span head, ``SEQ_CLS`` for a classifier (and a multiple-choice one), None without a head."""
    if "qa_outputs" in heads:
        return "QUESTION_ANS"
    return "SEQ_CLS" if heads else None


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
    return config_from_record(saved["adapter"], saved["config"])


def config_from_record(adapter_type: str, fields: Mapping) -> AdapterConfig:
    """The config of ``adapter_type`` from its saved fields (unknown fields, e.g. of an older
    version, are left out)."""
    config_cls = get_method(adapter_type).config_cls
    known = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in fields.items() if k in known})


def read_adapter_weights(directory: str | os.PathLike, prefix: str = PREFIX) -> dict:
    """The saved tensors of ``directory``, keyed by their names in the model (``prefix``, the
    folder's key prefix, removed)."""
    path = Path(directory) / WEIGHTS_NAME
    try:
        tensors = load_file(path)
    except Exception as err:  # safetensors raises several types for missing/corrupt files
        raise SsmloraError(f"Cannot read adapter weights {path}: {err}.") from None
    return {k.removeprefix(prefix): v for k, v in tensors.items()}


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, load_head: bool = True
) -> nn.Module:
    """Load a saved adapter into ``model``, injecting it first if ``model`` has none.

    Every adapter tensor must be present with the right shape; the head (``modules_to_save`` and
    the top-level ``classifier``/``score``/``pooler``, adapted or not) is loaded when
    ``load_head``, else left as it is (e.g. a new head for another task). Returns ``model``.
    """
    saved = read_adapter_config(directory)
    if not has_adapter(model):
        model = inject_adapters(model, saved)
    current = adapter_config(model)
    if current.adapter_type != saved.adapter_type:
        raise SsmloraError(
            f"{directory} holds a {saved.adapter_type!r} adapter but the model has "
            f"{current.adapter_type!r}."
        )
    state = method_of(model).state
    if state is not None:  # a wrapper's own layout: the method loads it
        meta = json.loads((Path(directory) / CONFIG_NAME).read_text())
        state.load(model, meta, read_adapter_weights(directory, prefix=""), load_head)
        return model
    tensors = read_adapter_weights(directory)
    expected = adapter_state_dict(model)
    # The head: fully trained modules, and the top-level head modules an adapter may wrap
    # (SSMLoRA's full_model preset adapts the classifier's linears).
    heads = set(current.modules_to_save or []) | set(default_head(model))
    reshaped = set(shape_mismatches(model, tensors, expected))
    problems = []
    to_load = {}
    for key, target in expected.items():
        is_head = any(key.startswith(h + ".") for h in heads)
        if is_head and not load_head:
            continue
        if key not in tensors:
            problems.append(f"missing {key}")
        elif key in reshaped:
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
