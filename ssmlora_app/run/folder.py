"""The one reader (and layout) of what a run leaves behind, ``runs/<name>/<version>/``::

    config.yaml                 the resolved CLI config (LightningCLI writes it)
    hparams.yaml                the run's :class:`~ssmlora_app.run.record.RunRecord`
    events.out.tfevents.*       TensorBoard scalars (losses, metrics, learning rates)
    checkpoints/last.ckpt ...   adapter + head + optimizer state (never the backbone)
    adapter/                    the adapter folder written when fit ends
    predictions/                ``ssmlora predict``'s files (by default)

Callbacks name its parts through :class:`RunFolder` (the adapter, the predictions, the
checkpoints), and ``export``, ``report``, ``predict`` and ``sweep`` read runs through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ssmlora_app.errors import SsmloraError
from ssmlora_app.run.record import RunRecord
from ssmlora_app.tasks import Task, get_task

EVENTS_GLOB = "events.out.tfevents.*"


class _HparamsLoader(yaml.SafeLoader):
    """Safe YAML plus the ``!!python/tuple`` tag Lightning writes for tuples."""


_HparamsLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def read_checkpoint(path: str | Path) -> tuple[RunRecord, dict[str, torch.Tensor]]:
    """A checkpoint's record and its adapter tensors (keys as in the model, without ``model.``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = checkpoint["ssmlora_hparams"]
        state = checkpoint["state_dict"]
    except (OSError, KeyError, RuntimeError, TypeError) as err:
        raise SsmloraError(f"Cannot read {path} as an ssmlora checkpoint: {err!r}.") from None
    record = RunRecord.from_hparams(hparams, str(path))
    return record, {k.removeprefix("model."): v for k, v in state.items()}


@dataclass(frozen=True)
class RunFolder:
    """One run's folder (see the module docstring for its layout)."""

    path: Path

    @classmethod
    def at(cls, save_dir: str | Path, name: str, version: str) -> RunFolder:
        """The folder the TensorBoard logger writes for ``save_dir``/``name``/``version``."""
        return cls(Path(save_dir) / name / version)

    @classmethod
    def find(cls, roots: Sequence[str | Path]) -> list[RunFolder]:
        """Folders under ``roots`` holding TensorBoard event files, sorted."""
        found = set()
        for root in map(Path, roots):
            if not root.is_dir():
                raise SsmloraError(f"Runs folder {root} does not exist.")
            found.update(p.parent for p in root.rglob(EVENTS_GLOB))
        return [cls(p) for p in sorted(found)]

    def logger_args(self) -> list[str]:
        """The command-line arguments that make ``ssmlora fit`` log into this folder."""
        version = self.path.name
        name = self.path.parent.name
        return [
            f"--trainer.logger.init_args.save_dir={self.path.parent.parent}",
            f"--trainer.logger.init_args.name={name}",
            f"--trainer.logger.init_args.version={version}",
        ]

    # Its parts.
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def hparams_path(self) -> Path:
        return self.path / "hparams.yaml"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / "last.ckpt"

    @property
    def predictions_dir(self) -> Path:
        return self.path / "predictions"

    def event_files(self) -> list[Path]:
        return sorted(self.path.glob(EVENTS_GLOB))

    def has_adapter(self) -> bool:
        return (self.adapter_dir / "adapter_config.json").is_file()

    # What it records.
    def hparams(self) -> dict:
        """``hparams.yaml`` as a dict (the record, and Lightning's data hyperparameters)."""
        try:
            return yaml.load(self.hparams_path.read_text(), Loader=_HparamsLoader) or {}
        except (OSError, yaml.YAMLError) as err:
            raise SsmloraError(
                f"Cannot read {self.hparams_path}: {err}. Give a run folder written by `ssmlora "
                "fit` (runs/<name>/version_N)."
            ) from None

    def record(self) -> RunRecord:
        return RunRecord.from_hparams(self.hparams(), str(self.hparams_path))

    def config(self) -> dict:
        """``config.yaml`` (the resolved CLI config); {} when absent."""
        if not self.config_path.is_file():
            return {}
        return yaml.safe_load(self.config_path.read_text()) or {}

    def seed(self) -> int | None:
        """``seed_everything`` of the run's config."""
        seed = self.config().get("seed_everything")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    def task(self) -> Task | None:
        """The run's task with its fields, from ``config.yaml`` (None without one)."""
        spec = (self.config().get("data") or {}).get("task")
        return task_from_config(spec) if spec is not None else None

    def scalars(self) -> dict[str, list[tuple[int, float]]]:
        """Every scalar the run logged: tag -> ``(step, value)`` in order."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(self.path), size_guidance={"scalars": 0})
        accumulator.Reload()
        return {
            tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]
        }


def task_from_config(spec: str | dict) -> Task:
    """A task from its config value: a built-in name, or ``{class_path, init_args}``."""
    if isinstance(spec, str):
        return get_task(spec)
    import importlib

    module_name, _, class_name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise SsmloraError(f"Cannot import the task class {spec['class_path']}: {err}.") from None
    fields = {
        k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("init_args", {}).items()
    }
    return cls(**fields)
