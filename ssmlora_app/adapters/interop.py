"""LoRA adapters made elsewhere, mapped onto our modules: ``peft`` directories and ``loralib``
state dicts.

- ``peft``: ``adapter_config.json`` (``peft_type: LORA``) + ``adapter_model.safetensors`` (or
  ``.bin``), keys ``base_model.model.<module>.lora_A.weight`` (``(r, d_in)``) and
  ``...lora_B.weight`` (``(d_out, r)``); older versions keep the adapter name
  (``lora_A.default.weight``) and wrap heads as ``<head>.modules_to_save.default.<param>``.
- ``loralib`` (the LoRA authors' library, their RoBERTa/DeBERTa GLUE checkpoints): a torch or
  safetensors state dict with the parameters directly on the layer, ``<module>.lora_A`` of shape
  ``(r, d_in)`` and ``<module>.lora_B`` of shape ``(d_out, r)``, the update being
  ``(lora_alpha / r) · B A`` (LoRA paper eq. 3 with its §4.1 scale). ``lora_alpha`` is not in the file: give it.

Source module names are mapped onto the target model by dotted suffix, so an adapter trained on
a bare encoder (``encoder.layer.0...``) or saved from a wrapped model (``module.roberta...``)
lands on ``roberta.encoder.layer.0...`` of our ``*ForSequenceClassification`` model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ssmlora_app.adapters.inject import HEAD_NAMES, adapter_state_dict, inject_adapters
from ssmlora_app.adapters.lora import LoRAConfig
from ssmlora_app.adapters.targets import LINEAR_TYPES
from ssmlora_app.errors import SsmloraError

PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_[AB])(?:\.[^.]+)?(?:\.weight)?")
"""``<module>.lora_A``, ``<module>.lora_A.weight`` or ``<module>.lora_A.<adapter>.weight``."""


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise several types for bad files
        raise SsmloraError(f"Cannot read LoRA weights {path}: {err}.") from None
    for key in ("state_dict", "model"):  # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SsmloraError(f"{path} is not a state dict of tensors.")
    return state


def read_peft_lora(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(peft config dict, tensors)`` of a ``peft`` LoRA directory, keys without the
    ``base_model.model.`` prefix and adapter names, lora weights as ``<module>.lora_A``."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "adapter_config.json").read_text())
    except (OSError, ValueError) as err:
        raise SsmloraError(f"Cannot read {directory / 'adapter_config.json'}: {err}.") from None
    if meta.get("peft_type") != "LORA":
        raise SsmloraError(
            f"{directory} holds a peft {meta.get('peft_type')!r} adapter; only LORA is imported."
        )
    unsupported = {
        "use_dora": bool(meta.get("use_dora")),
        "rank_pattern": bool(meta.get("rank_pattern")),
        "alpha_pattern": bool(meta.get("alpha_pattern")),
        "bias": meta.get("bias", "none") != "none",
        "lora_bias": bool(meta.get("lora_bias")),
    }
    if any(unsupported.values()):
        names = [k for k, v in unsupported.items() if v]
        raise SsmloraError(
            f"{directory} uses peft LoRA options this app does not implement: {names}. "
            "Only plain LoRA (one r and alpha, no DoRA, no bias) can be imported."
        )
    files = [directory / "adapter_model.safetensors", directory / "adapter_model.bin"]
    weights = next((f for f in files if f.is_file()), None)
    if weights is None:
        raise SsmloraError(f"{directory} has no adapter_model.safetensors or adapter_model.bin.")
    tensors = {}
    for key, value in load_tensors(weights).items():
        key = key.removeprefix(PEFT_PREFIX)
        key = re.sub(r"\.modules_to_save(\.[^.]+)?\.", ".", key)
        tensors[key] = value
    return meta, tensors


def _split(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """``({module: {"lora_A": A, "lora_B": B}}, {other key: tensor})``."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    rest = {}
    for key, value in tensors.items():
        match = LORA_KEY.fullmatch(key)
        if match:
            lora.setdefault(match["module"], {})[match["part"]] = value
        else:
            rest[key] = value
    broken = [m for m, parts in lora.items() if set(parts) != {"lora_A", "lora_B"}]
    if broken:
        raise SsmloraError(f"LoRA weights without their A/B partner for modules {broken[:3]}.")
    if not lora:
        raise SsmloraError("No LoRA weights (keys ending in lora_A / lora_B) in the file.")
    return lora, rest


def _resolve(name: str, candidates: list[str]) -> str | None:
    """The unique candidate equal to ``name`` or sharing its longest dotted suffix."""
    parts = name.split(".")
    for start in range(len(parts)):
        suffix = ".".join(parts[start:])
        found = [c for c in candidates if c == suffix or c.endswith("." + suffix)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            return None
    return None


def load_foreign_lora(
    model: nn.Module,
    source: str | Path,
    alpha: float | None = None,
    dropout: float = 0.0,
    load_head: bool = True,
) -> LoRAConfig:
    """Inject LoRA into ``model`` (a plain HF model, no adapter yet) at the modules ``source``
    adapts and load its weights; returns the resulting config.

    ``source`` is a ``peft`` LoRA directory or a ``loralib`` state-dict file (``.bin``, ``.pt``,
    ``.pth``, ``.safetensors``). ``alpha`` overrides ``lora_alpha`` (required for ``loralib``
    files, which do not store it). Head tensors (``classifier.*``, ``score.*``, ``pooler.*`` at
    the top level of the model) are loaded when ``load_head``; other non-LoRA tensors are
    ignored (a ``loralib`` file may hold the whole model).
    """
    source = Path(source)
    use_rslora = False
    if source.is_dir():
        meta, tensors = read_peft_lora(source)
        alpha = meta["lora_alpha"] if alpha is None else alpha
        use_rslora = bool(meta.get("use_rslora"))
        dropout = meta.get("lora_dropout", dropout) or 0.0
    elif source.is_file():
        tensors = load_tensors(source)
        if alpha is None:
            raise SsmloraError(
                f"{source} is a loralib state dict, which does not store lora_alpha: give it "
                "(--alpha; the LoRA authors' GLUE runs used their --lora_alpha flag)."
            )
    else:
        raise SsmloraError(f"No LoRA adapter at {source}: expected a peft folder or a file.")
    lora, rest = _split(tensors)

    linears = [n for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)]
    names = {module: _resolve(module, linears) for module in lora}
    unmapped = [module for module, target in names.items() if target is None]
    if unmapped:
        raise SsmloraError(
            f"{len(unmapped)} adapted modules of {source} match no unique linear layer of "
            f"{type(model).__name__} (e.g. {unmapped[0]!r}): is it the same architecture?"
        )
    ranks = {parts["lora_A"].shape[0] for parts in lora.values()}
    if len(ranks) != 1:
        raise SsmloraError(f"{source} mixes LoRA ranks {sorted(ranks)}; one rank is supported.")
    heads = [n for n, _ in model.named_children() if n in HEAD_NAMES]
    head_keys = {k for k in model.state_dict() if k.split(".", 1)[0] in heads}
    head_state = {}
    for key, value in rest.items():
        parts = key.split(".")
        tails = [".".join(parts[i:]) for i, part in enumerate(parts) if part in heads]
        target = next((t for t in tails if t in head_keys), None)
        if target is not None:
            head_state[target] = value
    config = LoRAConfig(
        target_modules=sorted(names.values()),
        r=ranks.pop(),
        alpha=float(alpha),
        dropout=float(dropout),
        use_rslora=use_rslora,
        modules_to_save=heads,
    )
    inject_adapters(model, config)
    state = {}
    for module, parts in lora.items():
        for part, value in parts.items():
            state[f"{names[module]}.{part}.weight"] = value
    if load_head:
        state.update(head_state)
    expected = adapter_state_dict(model)
    problems = [
        f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        raise SsmloraError(
            f"LoRA weights of {source} do not fit {type(model).__name__}: "
            + "; ".join(problems[:3])
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return config
