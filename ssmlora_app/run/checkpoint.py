"""A checkpoint file of ``ssmlora fit``: read safely, what it records, and whether it fits a config.

Every command that takes a checkpoint (``fit``/``validate``/``test``/``predict --ckpt_path``,
``export --checkpoint``) reads it here first, so a missing, truncated, random or foreign file is one
line ("not a checkpoint") before any work, and a checkpoint of another task, label set, backbone or
adapter configuration is refused with what differs, instead of being used silently when the tensor
shapes happen to match.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ssmlora_app.errors import SsmloraError
from ssmlora_app.run.record import RunRecord

RUN_FILES = ("hparams.yaml", "config.yaml")
"""Files that make a folder a run folder (``runs/<name>/<version>``)."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint records besides its tensors."""

    path: Path
    record: RunRecord
    global_step: int
    epochs_started: int
    """Training epochs begun (Lightning's ``epoch_progress.current.processed``): a resumed fit
    continues while this is below ``max_epochs``."""

    @property
    def run(self) -> Path | None:
        """The run folder holding the checkpoint (``<run>/checkpoints/x.ckpt``), if any."""
        return run_folder_of(self.path.parent)

    def finished(self, max_epochs: int | None, max_steps: int | None) -> bool:
        """Whether a fit resumed from it under these limits would train no step (Lightning's
        rule: ``max_steps`` reached, or ``max_epochs`` epochs begun; no limit: 1000 epochs)."""
        if max_steps is not None and max_steps != -1 and self.global_step >= max_steps:
            return True
        if max_epochs is None:
            max_epochs = 1000 if max_steps in (None, -1) else -1
        return max_epochs != -1 and self.epochs_started >= max_epochs


def run_folder_of(folder: Path) -> Path | None:
    """The run folder of ``<run>/checkpoints`` or ``<run>/adapter`` (a parent with a run's files)."""
    run = folder.resolve().parent
    return run if any((run / name).is_file() for name in RUN_FILES) else None


def load_checkpoint(path: str | Path, option: str = "--ckpt_path") -> dict:
    """The checkpoint at ``path`` (tensors memory-mapped), or a one-line error naming ``option``."""
    path = Path(path).expanduser()
    if path.is_dir():
        hint = path / "checkpoints" / "last.ckpt"
        hint_text = f", e.g. {hint}" if hint.is_file() else ""
        raise SsmloraError(
            f"{option}={path} is a folder, not a checkpoint: give a .ckpt file{hint_text}."
        )
    if not path.is_file():
        raise SsmloraError(f"{option}={path}: no such file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for files that are not its checkpoints
        raise SsmloraError(
            f"{option}={path} is not a checkpoint (truncated, corrupt or another format): give a "
            ".ckpt file written by `ssmlora fit` (runs/<name>/version_N/checkpoints/last.ckpt)."
        ) from None
    if not isinstance(checkpoint, dict) or not {"ssmlora_hparams", "state_dict"} <= set(checkpoint):
        raise SsmloraError(
            f"{option}={path} is not an ssmlora checkpoint (it records no run): give a .ckpt file "
            "written by `ssmlora fit` (runs/<name>/version_N/checkpoints/last.ckpt)."
        )
    return checkpoint


def inspect_checkpoint(path: str | Path, option: str = "--ckpt_path") -> CheckpointInfo:
    """Read ``path`` (see :func:`load_checkpoint`) and return what it records."""
    checkpoint = load_checkpoint(path, option)
    record = RunRecord.from_hparams(checkpoint["ssmlora_hparams"], str(path))
    progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_progress", {})
    started = progress.get("current", {}).get("processed", checkpoint.get("epoch", 0))
    return CheckpointInfo(
        Path(path).expanduser(), record, int(checkpoint.get("global_step", 0)), int(started)
    )


def read_checkpoint(path: str | Path) -> tuple[RunRecord, dict[str, torch.Tensor]]:
    """A checkpoint's record and its adapter tensors (keys as in the model, without ``model.``)."""
    checkpoint = load_checkpoint(path, "--checkpoint")
    record = RunRecord.from_hparams(checkpoint["ssmlora_hparams"], str(path))
    return record, {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}


def _backbone_key(record: RunRecord) -> dict:
    """What identifies the frozen backbone: the model (a hub id's or folder's last part: a local
    copy of ``roberta-base`` is ``roberta-base``), its revision and GGUF file, or the config dict
    and seed of random weights."""
    backbone = record.backbone
    if backbone.config is not None:
        return {"config": backbone.config, "init_seed": backbone.init_seed}
    name = Path(str(backbone.name_or_path).rstrip("/")).name
    return {"name_or_path": name, "revision": backbone.revision, "gguf_file": backbone.gguf_file}


def differences(saved: RunRecord, current: RunRecord) -> list[str]:
    """What differs between the run a checkpoint records and the run a config describes (empty
    when the checkpoint fits): task, classes, objective, backbone, adapter configuration."""
    old, new = saved.task_info, current.task_info
    found = []
    if old.task != new.task:
        found.append(f"it was trained on task {old.task!r}, this config's task is {new.task!r}")
    if old.num_labels != new.num_labels:
        found.append(
            f"its head has {old.num_labels} output(s) ({_classes(old.num_labels)}), the task has "
            f"{new.num_labels} ({_classes(new.num_labels)})"
        )
    elif old.label_names and new.label_names and list(old.label_names) != list(new.label_names):
        found.append(
            f"its classes are {list(old.label_names)} (in id order), the data gives "
            f"{list(new.label_names)}: its predictions would be mislabelled"
        )
    if old.objective != new.objective:
        found.append(f"its objective is {old.objective}, this config's is {new.objective}")
    old_backbone, new_backbone = _backbone_key(saved), _backbone_key(current)
    if old_backbone != new_backbone:
        found.append(f"its backbone is {old_backbone}, this config's is {new_backbone}")
    old_adapter, new_adapter = saved.adapter_fields(), current.adapter_fields()
    changed = sorted(
        k
        for k in old_adapter.keys() & new_adapter.keys()
        if _plain(old_adapter[k]) != _plain(new_adapter[k])
    )
    if changed:
        pairs = ", ".join(f"{k}={old_adapter[k]!r} (now {new_adapter[k]!r})" for k in changed)
        found.append(f"its adapter has {pairs}")
    return found


def _classes(num_labels: int) -> str:
    return "regression" if num_labels == 1 else f"{num_labels} classes"


def _plain(value):
    """Tuples and lists compare equal (records are read back from YAML/JSON)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def check_fits(info: CheckpointInfo, current: RunRecord, option: str = "--ckpt_path") -> None:
    """Refuse a checkpoint whose run differs from ``current`` (see :func:`differences`)."""
    found = differences(info.record, current)
    if not found:
        return
    run = info.run
    fix = (
        f"use its run's own config (--config {run / 'config.yaml'})"
        if run is not None and (run / "config.yaml").is_file()
        else "use the config it was trained with"
    )
    raise SsmloraError(f"{option}={info.path} does not fit this config: {'; '.join(found)}; {fix}.")
