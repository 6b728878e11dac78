"""``ssmlora export`` and ``ssmlora import``: rebuild a trained model, then write what other tools
load.

A model is rebuilt from one of
- a run folder (``runs/<name>/version_N``): ``hparams.yaml`` gives the backbone and the task,
  ``adapter/`` (or ``checkpoints/last.ckpt``) the trained weights;
- a checkpoint (``.ckpt``): it carries the same hyperparameters and the adapter + head;
- an adapter folder (ours or ``peft``'s) or a ``loralib`` state dict, plus ``--backbone``.

and exported as
- ``adapter/``: the adapter and head only (every method); for LoRA it is also a ``peft``
  directory (``PeftModel.from_pretrained``);
- ``merged/`` (LoRA): ``W0 + (alpha/r)·B·A`` folded into the backbone (spec §1) and saved as a
  plain Hugging Face model directory with its tokenizer (``AutoModelForSequenceClassification
  .from_pretrained``), checked to give the adapter model's logits before it is written.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from transformers import PreTrainedModel

from ssmlora_app.adapters import (
    AdapterLayer,
    adapter_config,
    adapter_state_dict,
    inject_adapters,
    load_adapter,
    merge_adapters,
    save_adapter,
)
from ssmlora_app.adapters.inject import CONFIG_ATTR
from ssmlora_app.adapters.interop import load_foreign_lora
from ssmlora_app.adapters.registry import get_spec
from ssmlora_app.adapters.targets import replace_module
from ssmlora_app.backbone import BackboneConfig, build_classifier
from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import TaskInfo, get_task


class _HparamsLoader(yaml.SafeLoader):
    """Safe YAML plus the ``!!python/tuple`` tag Lightning writes for tuples."""


_HparamsLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


@dataclass
class Rebuilt:
    """A backbone with its trained adapter and head loaded, in eval mode."""

    model: PreTrainedModel
    backbone: BackboneConfig
    task_info: TaskInfo | None
    """The task it was trained on, when the source records it (runs and checkpoints)."""


def _task_info(fields: dict | None) -> TaskInfo | None:
    if not fields:
        return None
    known = {f.name for f in dataclasses.fields(TaskInfo)}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
    return TaskInfo(**fields)


def _backbone(fields: dict) -> BackboneConfig:
    known = {f.name for f in dataclasses.fields(BackboneConfig)}
    return BackboneConfig(**{k: v for k, v in fields.items() if k in known})


def _classifier(backbone: BackboneConfig, info: TaskInfo) -> PreTrainedModel:
    return build_classifier(
        backbone,
        num_labels=info.num_labels,
        problem_type=info.problem_type,
        vocab_size=info.vocab_size,
        pad_token_id=info.pad_token_id,
    )


def read_run_hparams(run: str | Path) -> dict:
    """The ``hparams.yaml`` of a run folder (backbone, adapter, task_info, parameter counts)."""
    path = Path(run) / "hparams.yaml"
    try:
        return yaml.load(path.read_text(), Loader=_HparamsLoader) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SsmloraError(
            f"Cannot read {path}: {err}. Give a run folder written by `ssmlora fit` "
            "(runs/<name>/version_N)."
        ) from None


def _from_checkpoint_state(model: nn.Module, hparams: dict, state: dict, origin: str) -> None:
    fields = dict(hparams.get("adapter") or {})
    spec = get_spec(fields.pop("adapter_type", "lora"))
    known = {f.name for f in dataclasses.fields(spec.config_cls)}
    inject_adapters(model, spec.config_cls(**{k: v for k, v in fields.items() if k in known}))
    weights = {k.removeprefix("model."): v for k, v in state.items()}
    missing = set(adapter_state_dict(model)) - set(weights)
    if missing:
        raise SsmloraError(
            f"{origin} lacks {len(missing)} adapter tensors (e.g. {sorted(missing)[0]})."
        )
    model.load_state_dict(weights, strict=False)


def _num_labels(source: Path) -> int | None:
    """Outputs of the head in an adapter folder or state dict, if it has one."""
    from ssmlora_app.adapters.interop import load_tensors, read_peft_lora

    if source.is_dir():
        from safetensors.torch import load_file

        ours = source / "adapter_model.safetensors"
        if json.loads((source / "adapter_config.json").read_text()).get("ssmlora"):
            tensors = load_file(ours)
        else:
            tensors = read_peft_lora(source)[1]
    else:
        tensors = load_tensors(source)
    for key, value in tensors.items():
        if key.endswith(("out_proj.weight", "classifier.weight", "score.weight")):
            return value.shape[0]
    return None


def rebuild(
    run: str | None = None,
    checkpoint: str | None = None,
    adapter: str | None = None,
    backbone: BackboneConfig | None = None,
    task: str | None = None,
    num_labels: int | None = None,
    alpha: float | None = None,
) -> Rebuilt:
    """Rebuild a trained model from exactly one of ``run``, ``checkpoint`` or ``adapter``.

    ``backbone`` replaces the recorded one (e.g. a local copy of the hub model) and is required
    with ``adapter``. ``task`` or ``num_labels`` size the head when the source does not record
    the task (an adapter folder); ``alpha`` is the ``lora_alpha`` of a ``loralib`` file.
    """
    if sum(x is not None for x in (run, checkpoint, adapter)) != 1:
        raise SsmloraError("Give exactly one of --run, --checkpoint and --adapter.")
    if run is not None:
        hparams = read_run_hparams(run)
        info = _task_info(hparams.get("task_info"))
        backbone = backbone or _backbone(hparams["backbone"])
        model = _classifier(backbone, info)
        if (Path(run) / "adapter" / "adapter_config.json").is_file():
            load_adapter(model, Path(run) / "adapter")
        else:
            last = Path(run) / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise SsmloraError(f"{run} has neither adapter/ nor checkpoints/last.ckpt.")
            state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
            _from_checkpoint_state(model, hparams, state, str(last))
        return Rebuilt(model.eval(), backbone, info)
    if checkpoint is not None:
        try:
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
            hparams = ckpt["ssmlora_hparams"]
        except (OSError, KeyError, RuntimeError) as err:
            raise SsmloraError(
                f"Cannot read {checkpoint} as an ssmlora checkpoint: {err!r}."
            ) from None
        info = _task_info(hparams.get("task_info"))
        backbone = backbone or _backbone(hparams["backbone"])
        model = _classifier(backbone, info)
        _from_checkpoint_state(model, hparams, ckpt["state_dict"], checkpoint)
        return Rebuilt(model.eval(), backbone, info)

    source = Path(adapter)
    if backbone is None:
        raise SsmloraError("--adapter needs --backbone (name_or_path, or a config dict).")
    if not source.exists():
        raise SsmloraError(f"No adapter at {source}.")
    info = None
    if task is not None:
        from ssmlora_app.tasks.datamodule import TaskDataModule

        info = TaskDataModule(
            task=task,
            tokenizer=backbone.tokenizer_source,
            tokenizer_gguf_file=backbone.tokenizer_gguf_file,
        ).task_info
    else:
        labels = num_labels or _num_labels(source)
        if labels is None:
            raise SsmloraError(f"{source} has no head to size from: give --task or --num_labels.")
        kind = "regression" if labels == 1 else "single_label_classification"
        info = TaskInfo(task="", num_labels=labels, problem_type=kind, metrics=(), eval_splits=())
    model = _classifier(backbone, info)
    ours = source.is_dir() and "ssmlora" in json.loads((source / "adapter_config.json").read_text())
    if ours:
        load_adapter(model, source)
    else:
        load_foreign_lora(model, source, alpha=alpha)
    return Rebuilt(model.eval(), backbone, info if task is not None else None)


def _probe_inputs(model: PreTrainedModel, length: int = 16) -> dict[str, torch.Tensor]:
    config = model.config
    length = min(length, getattr(config, "max_position_embeddings", length) - 2)
    generator = torch.Generator().manual_seed(0)
    low = 3 if config.vocab_size > 8 else 0  # keep clear of the special tokens
    ids = torch.randint(low, config.vocab_size, (2, length), generator=generator)
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


@torch.no_grad()
def merge_into_backbone(model: PreTrainedModel, verify: bool = True) -> PreTrainedModel:
    """Fold the adapter into the backbone and remove the adapter layers, in place: a plain HF
    model. With ``verify``, its logits on random tokens must equal the adapter model's."""
    inputs = _probe_inputs(model) if verify else None
    before = model(**inputs).logits.float() if verify else None
    merge_adapters(model)  # NotImplementedError for adapters that cannot be merged
    for name, module in list(model.named_modules()):
        if isinstance(module, AdapterLayer):
            replace_module(model, name, module.base_layer)
    delattr(model, CONFIG_ATTR)
    if verify:
        after = model(**inputs).logits.float()
        if not torch.allclose(before, after, atol=1e-4, rtol=1e-3):
            raise SsmloraError(
                "The merged model's logits differ from the adapter model's by "
                f"{(before - after).abs().max():.3g}: not written."
            )
    return model


def _tokenizer(rebuilt: Rebuilt):
    if rebuilt.backbone.tokenizer_source is not None:
        from ssmlora_app.tokenization import load_tokenizer

        backbone = rebuilt.backbone
        return load_tokenizer(backbone.tokenizer_source, gguf_file=backbone.tokenizer_gguf_file)
    if rebuilt.task_info is not None:
        return get_task(rebuilt.task_info.task).builtin_tokenizer()
    return None


def export_rebuilt(rebuilt: Rebuilt, out: str | Path, merge: bool = True) -> dict[str, Path]:
    """Write ``adapter/`` and, for adapters that can be merged, ``merged/`` under ``out``."""
    out = Path(out)
    label_names = _label_names(rebuilt.task_info)
    written = {
        "adapter": save_adapter(
            rebuilt.model,
            out / "adapter",
            base_model_name_or_path=rebuilt.backbone.name_or_path,
            metadata={"label_names": list(label_names)} if label_names else None,
        )
    }
    if not merge:
        return written
    if not _mergeable(rebuilt.model):
        return written
    kind = adapter_config(rebuilt.model).adapter_type
    model = merge_into_backbone(rebuilt.model)
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
    model.config.ssmlora_merged_adapter = kind
    model.save_pretrained(out / "merged")
    tokenizer = _tokenizer(rebuilt)
    if tokenizer is not None:
        tokenizer.save_pretrained(out / "merged")
    written["merged"] = out / "merged"
    return written


@torch.no_grad()
def _mergeable(model: nn.Module) -> bool:
    """Whether the model's adapter can be folded into its base weights (tried on one layer)."""
    layer = next((m for m in model.modules() if isinstance(m, AdapterLayer)), None)
    if layer is None:
        return False
    try:
        layer.merge()
    except (NotImplementedError, SsmloraError):
        return False
    layer.unmerge()
    return True


def _label_names(info: TaskInfo | None) -> tuple[str, ...] | None:
    if info is None or not info.task:
        return None
    if info.label_names:  # e.g. a custom task's class names, saved with the run
        return tuple(info.label_names)
    return getattr(get_task(info.task), "label_names", None)


def export(
    out: str,
    run: str | None = None,
    checkpoint: str | None = None,
    adapter: str | None = None,
    backbone: BackboneConfig | None = None,
    task: str | None = None,
    num_labels: int | None = None,
    alpha: float | None = None,
    merge: bool = True,
) -> None:
    """Export a trained adapter: ``OUT/adapter`` (adapter + head; for LoRA also a peft
    directory) and, for LoRA, ``OUT/merged`` (a plain Hugging Face model with its tokenizer).

    Args:
        out: Output folder.
        run: A run folder (runs/<name>/version_N): its hparams.yaml and adapter/ or last.ckpt.
        checkpoint: A checkpoint (.ckpt) written by ``ssmlora fit``.
        adapter: An adapter folder (ours or peft's) or a loralib state dict; needs --backbone.
        backbone: The backbone: replaces the recorded one of a run or checkpoint (e.g. a local
            copy), required with --adapter.
        task: With --adapter: the task (sizes the head, names the labels, brings a tokenizer).
        num_labels: With --adapter and no --task: the head's outputs (default: from its weights).
        alpha: lora_alpha of a loralib state dict (not stored in the file).
        merge: Also write the merged model (LoRA only; other adapters cannot be merged).
    """
    rebuilt = rebuild(run, checkpoint, adapter, backbone, task, num_labels, alpha)
    kind = adapter_config(rebuilt.model).adapter_type
    written = export_rebuilt(rebuilt, out, merge=merge)
    for name, path in written.items():
        print(f"{name}: {path}")
    if merge and "merged" not in written:
        print(f"merged: skipped ({kind} adapters cannot be merged into the backbone)")


def import_adapter(
    source: str,
    out: str,
    backbone: BackboneConfig,
    task: str | None = None,
    num_labels: int | None = None,
    alpha: float | None = None,
) -> None:
    """Import a LoRA adapter made elsewhere (a peft folder or a loralib state dict) as an ssmlora
    adapter folder, mapped onto this backbone's modules; use it with
    ``--model.init_adapter_from OUT`` or ``ssmlora export --adapter OUT``.

    Args:
        source: A peft LoRA folder or a loralib state dict (.bin, .pt, .safetensors).
        out: Folder for the ssmlora adapter.
        backbone: The backbone the adapter was trained on.
        task: The task (sizes the head); else --num_labels or the saved head's size.
        num_labels: Outputs of the head when there is no --task.
        alpha: lora_alpha of a loralib state dict (not stored in the file).
    """
    rebuilt = rebuild(
        adapter=source,
        backbone=backbone,
        task=task,
        num_labels=num_labels,
        alpha=alpha,
    )
    path = save_adapter(rebuilt.model, out, base_model_name_or_path=backbone.name_or_path)
    config = adapter_config(rebuilt.model)
    print(f"Imported LoRA r={config.r} alpha={config.alpha} on {len(config.target_modules)} layers")
    print(f"Adapter written to {path}")
