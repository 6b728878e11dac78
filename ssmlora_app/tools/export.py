"""``ssmlora export`` and ``ssmlora import``: rebuild a trained model, then write what other tools
load.

A model is rebuilt through the one model factory (:mod:`ssmlora_app.factory`: the run's objective
picks the head, so a causal-LM run comes back as a causal LM with its LM head) from one of
- a run folder (``runs/<name>/version_N``, read through :class:`~ssmlora_app.run.RunFolder`):
  its record gives the backbone, the adapter and the task, ``adapter/`` (or
  ``checkpoints/last.ckpt``) the trained weights;
- a checkpoint (``.ckpt``): it carries the same record and the adapter + head;
- an adapter folder (ours or ``peft``'s) or a ``loralib`` state dict, plus ``--backbone``.

and exported as
- ``adapter/``: the adapter and head only (every method); for LoRA it is also a ``peft``
  directory (``PeftModel.from_pretrained``);
- ``merged/`` (methods that declare themselves mergeable): the adapter folded into the backbone
  and saved as a plain Hugging Face model directory with its tokenizer
  (``AutoModelFor*.from_pretrained``), checked to give the adapter model's logits before it is
  written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from ssmlora_app.adapters import (
    adapter_config,
    adapter_state_dict,
    load_adapter,
    merge_and_unload,
    method_of,
    save_adapter,
)
from ssmlora_app.adapters.inject import inner_model
from ssmlora_app.adapters.interop import load_foreign_lora
from ssmlora_app.atomic import respect_umask
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.errors import SsmloraError
from ssmlora_app.factory import build_model
from ssmlora_app.objectives import objective_for
from ssmlora_app.outputs import check_output_dir
from ssmlora_app.run import RunFolder, RunRecord, read_checkpoint
from ssmlora_app.tasks import TASKS, Task, TaskInfo
from ssmlora_app.tokenization import load_tokenizer


@dataclass
class Rebuilt:
    """A backbone with its trained adapter and head loaded, in eval mode."""

    model: nn.Module
    backbone: BackboneConfig
    task_info: TaskInfo | None
    """The task it was trained on, when the source records it (runs and checkpoints)."""
    task: Task | None = None
    """The task with its fields (a run's config.yaml, or a built-in task by name)."""


def _from_record(
    record: RunRecord, backbone: BackboneConfig | None
) -> tuple[nn.Module, BackboneConfig]:
    backbone = backbone or record.backbone
    return build_model(backbone, record.adapter, objective_for(record.task_info)), backbone


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    missing = set(adapter_state_dict(model)) - set(state)
    if missing:
        raise SsmloraError(
            f"{origin} lacks {len(missing)} adapter tensors (e.g. {sorted(missing)[0]})."
        )
    model.load_state_dict(state, strict=False)


def _named_task(info: TaskInfo | None) -> Task | None:
    return TASKS[info.task]() if info is not None and info.task in TASKS else None


def _head_size(source: Path) -> int | None:
    """Outputs of the head in an adapter folder or state dict, if it has one."""
    from safetensors.torch import load_file

    from ssmlora_app.adapters.interop import load_tensors, read_peft_lora

    if source.is_dir():
        if json.loads((source / "adapter_config.json").read_text()).get("ssmlora"):
            tensors = load_file(source / "adapter_model.safetensors")
        else:
            tensors = read_peft_lora(source)[1]
    else:
        tensors = load_tensors(source)
    for key, value in tensors.items():
        if key.endswith(("out_proj.weight", "classifier.weight", "score.weight")):
            return value.shape[0]
    return None


def _adapter_only_info(
    source: Path, backbone: BackboneConfig, task: str | None, num_labels: int | None
) -> tuple[TaskInfo, Task | None]:
    """The task info of an adapter folder, which records none: from ``--task`` (through the data
    module, as training makes it), or a classifier sized by ``--num_labels`` / its head."""
    if task is not None:
        from ssmlora_app.data import TaskDataModule

        data = TaskDataModule(
            task=task,
            tokenizer=backbone.tokenizer_source,
            tokenizer_gguf_file=backbone.tokenizer_gguf_file,
        )
        return data.task_info, data.task
    labels = num_labels or _head_size(source)
    if labels is None:
        raise SsmloraError(f"{source} has no head to size from: give --task or --num_labels.")
    kind = "regression" if labels == 1 else "single_label_classification"
    return TaskInfo(task="", num_labels=labels, problem_type=kind, metrics=(), eval_splits=()), None


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
        folder = RunFolder(Path(run))
        record = folder.record()
        model, backbone = _from_record(record, backbone)
        if folder.has_adapter():
            load_adapter(model, folder.adapter_dir)
        elif folder.last_checkpoint.is_file():
            _load_state(
                model, read_checkpoint(folder.last_checkpoint)[1], str(folder.last_checkpoint)
            )
        else:
            raise SsmloraError(f"{run} has neither adapter/ nor checkpoints/last.ckpt.")
        task_ = folder.task() or _named_task(record.task_info)
        return Rebuilt(model.eval(), backbone, record.task_info, task_)
    if checkpoint is not None:
        record, state = read_checkpoint(checkpoint)
        model, backbone = _from_record(record, backbone)
        _load_state(model, state, checkpoint)
        return Rebuilt(model.eval(), backbone, record.task_info, _named_task(record.task_info))

    source = Path(adapter)
    if backbone is None:
        raise SsmloraError("--adapter needs --backbone (name_or_path, or a config dict).")
    if not source.exists():
        raise SsmloraError(f"No adapter at {source}.")
    info, task_ = _adapter_only_info(source, backbone, task, num_labels)
    model = objective_for(info).build_model(backbone)
    ours = source.is_dir() and "ssmlora" in json.loads((source / "adapter_config.json").read_text())
    if ours:
        model = load_adapter(model, source)
    else:
        load_foreign_lora(model, source, alpha=alpha)
    return Rebuilt(model.eval(), backbone, info if task is not None else None, task_)


def _probe_inputs(model: nn.Module, length: int = 16) -> dict[str, torch.Tensor]:
    config = inner_model(model).config
    length = min(length, getattr(config, "max_position_embeddings", length) - 2)
    generator = torch.Generator().manual_seed(0)
    low = 3 if config.vocab_size > 8 else 0  # keep clear of the special tokens
    ids = torch.randint(low, config.vocab_size, (2, length), generator=generator)
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


@torch.no_grad()
def merge_into_backbone(model: nn.Module, verify: bool = True) -> nn.Module:
    """Fold the adapter into the backbone and remove the adapter modules, in place: a plain HF
    model. With ``verify``, its logits on random tokens must equal the adapter model's."""
    inputs = _probe_inputs(model) if verify else None
    before = model(**inputs).logits.float() if verify else None
    model = merge_and_unload(model)  # SsmloraError for a method that is not mergeable
    if verify:
        after = model(**inputs).logits.float()
        if not torch.allclose(before, after, atol=1e-4, rtol=1e-3):
            raise SsmloraError(
                "The merged model's logits differ from the adapter model's by "
                f"{(before - after).abs().max():.3g}: not written."
            )
    return model


def merge_refusal(model: nn.Module) -> str | None:
    """Why no ``merged/`` can be written for ``model``; None when it can."""
    method = method_of(model)
    if not method.can_merge(adapter_config(model)):
        return f"{method.name} adapters cannot be merged into the backbone"
    if not isinstance(inner_model(model), PreTrainedModel):
        return (
            f"a merged {type(model).__name__} has no transformers class to be saved as; "
            "use the adapter folder with the backbone"
        )
    return None


def _tokenizer(rebuilt: Rebuilt):
    if rebuilt.backbone.tokenizer_source is not None:
        backbone = rebuilt.backbone
        return load_tokenizer(backbone.tokenizer_source, gguf_file=backbone.tokenizer_gguf_file)
    return rebuilt.task.builtin_tokenizer() if rebuilt.task is not None else None


def _label_names(rebuilt: Rebuilt) -> tuple[str, ...] | None:
    info = rebuilt.task_info
    if info is None or not info.task:
        return None
    if info.label_names:  # e.g. a custom task's class names, saved with the run
        return tuple(info.label_names)
    return rebuilt.task.label_names if rebuilt.task is not None else None


def export_rebuilt(rebuilt: Rebuilt, out: str | Path, merge: bool = True) -> dict[str, Path]:
    """Write ``adapter/`` and, for adapters that can be merged, ``merged/`` under ``out`` (an
    earlier export's ``adapter/`` and ``merged/`` there are removed first: nothing stale stays)."""
    out = Path(out)
    for old in (out / "adapter", out / "merged"):
        if old.is_dir():
            shutil.rmtree(old)
    label_names = _label_names(rebuilt)
    written = {
        "adapter": save_adapter(
            rebuilt.model,
            out / "adapter",
            base_model_name_or_path=rebuilt.backbone.name_or_path,
            metadata={"label_names": list(label_names)} if label_names else None,
        )
    }
    if not merge or merge_refusal(rebuilt.model) is not None:
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
    respect_umask(out / "merged")  # safetensors writes 0600
    written["merged"] = out / "merged"
    return written


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
    overwrite: bool = False,
) -> None:
    """Export a trained adapter: ``OUT/adapter`` (adapter + head; for LoRA also a peft
    directory) and, for mergeable methods, ``OUT/merged`` (a plain Hugging Face model with its
    tokenizer: a sequence classifier or a causal LM, as the run trained it).

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
        merge: Also write the merged model (mergeable methods only, e.g. LoRA).
        overwrite: Write into an ``out`` that already holds files (an earlier export's adapter/
            and merged/ are replaced; nothing of theirs stays).
    """
    check_output_dir(out, "--out", overwrite)
    rebuilt = rebuild(run, checkpoint, adapter, backbone, task, num_labels, alpha)
    refusal = merge_refusal(rebuilt.model)
    written = export_rebuilt(rebuilt, out, merge=merge)
    for name, path in written.items():
        print(f"{name}: {path}")
    if merge and "merged" not in written:
        print(f"merged: skipped ({refusal})")


def import_adapter(
    source: str,
    out: str,
    backbone: BackboneConfig,
    task: str | None = None,
    num_labels: int | None = None,
    alpha: float | None = None,
    overwrite: bool = False,
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
        overwrite: Write into an ``out`` that already holds files.
    """
    check_output_dir(out, "--out", overwrite)
    rebuilt = rebuild(
        adapter=source, backbone=backbone, task=task, num_labels=num_labels, alpha=alpha
    )
    label_names = _label_names(rebuilt)
    path = save_adapter(
        rebuilt.model,
        out,
        base_model_name_or_path=backbone.name_or_path,
        metadata={"label_names": list(label_names)} if label_names else None,
    )
    config = adapter_config(rebuilt.model)
    print(f"Imported LoRA r={config.r} alpha={config.alpha} on {len(config.target_modules)} layers")
    print(f"Adapter written to {path}")
