"""The one reader (and layout) of what a run leaves behind, ``runs/<name>/<version>/``::

    config.yaml                 the resolved CLI config (LightningCLI writes it)
    hparams.yaml                the run's :class:`~ssmlora_app.run.record.RunRecord`
    events.out.tfevents.*       TensorBoard scalars (losses, metrics, learning rates)
    checkpoints/last.ckpt ...   adapter + head + optimizer state (never the backbone)
    adapter/                    the adapter folder written when fit ends (its result)
    validate/, test/, predict/  the logs (and config) of evaluations of the run
    predictions/, predictions-2/ ...  ``ssmlora predict``'s files (a new folder each time)

Only ``fit`` creates a run folder; a second ``fit`` into an existing one is refused unless it
resumes from one of its checkpoints (see :mod:`ssmlora_app.preflight`).

Callbacks name its parts through :class:`RunFolder` (the adapter, the predictions, the
checkpoints), and ``export``, ``report``, ``predict`` and ``sweep`` read runs through it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ssmlora_app.errors import SsmloraError
from ssmlora_app.run.record import RunRecord
from ssmlora_app.tasks import Task, get_task

EVENTS_GLOB = "events.out.tfevents.*"
NOT_SETTINGS = (
    "seed_everything",
    "data.shuffle_seed",
    "ckpt_path",
    "allow_untrained",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "checkpoint",
    "export",
    "summary",
    "diagnostics",
    "lr_monitor",
    "predictions",
    "sigterm_checkpoint",
    "hrm_diagnostics",
    "ssmlora_diagnostics",
    "sdt_selection",
)
"""Keys of config.yaml (and everything under them) that are not a run's settings: the seed keys
(``sweep`` sets both) and where and how it logs, checkpoints and resumes. Two runs whose other keys
agree are seeds of one configuration (:meth:`RunFolder.settings_hash`)."""


class _HparamsLoader(yaml.SafeLoader):
    """Safe YAML plus the ``!!python/tuple`` tag Lightning writes for tuples."""


_HparamsLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


@dataclass(frozen=True)
class RunFolder:
    """One run's folder (see the module docstring for its layout)."""

    path: Path

    @classmethod
    def at(cls, save_dir: str | Path, name: str, version: str) -> RunFolder:
        """The folder the TensorBoard logger writes for ``save_dir``/``name``/``version``."""
        return cls(Path(save_dir) / name / version)

    @classmethod
    def next_version(cls, save_dir: str | Path, name: str) -> RunFolder:
        """``save_dir/name/version_N`` with N one above the highest there (TensorBoard's rule)."""
        root = Path(save_dir) / name
        taken = [
            int(p.name.removeprefix("version_"))
            for p in (root.iterdir() if root.is_dir() else [])
            if p.name.removeprefix("version_").isdigit() and p.name.startswith("version_")
        ]
        return cls(root / f"version_{max(taken, default=-1) + 1}")

    @classmethod
    def find(cls, roots: Sequence[str | Path]) -> list[RunFolder]:
        """Folders under ``roots`` holding TensorBoard event files, sorted."""
        found = set()
        for root in map(Path, roots):
            if root.is_file():
                raise SsmloraError(f"Runs folder {root} is a file: give the folder of the runs.")
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

    def stage_dir(self, stage: str) -> Path:
        """Where ``validate``/``test``/``predict`` of this run log (``<run>/<stage>``)."""
        return self.path / stage

    def new_predictions_dir(self) -> Path:
        """A predictions folder not used yet: ``predictions``, else ``predictions-2``, ..."""
        candidate, n = self.predictions_dir, 2
        while candidate.exists() and any(candidate.iterdir()):
            candidate = self.path / f"predictions-{n}"
            n += 1
        return candidate

    def checkpoint_files(self) -> list[Path]:
        return sorted(self.checkpoints_dir.glob("*.ckpt")) if self.checkpoints_dir.is_dir() else []

    def holds_run(self) -> bool:
        """Whether a fit already wrote here (config, record, logs, checkpoints or adapter)."""
        return self.path.is_dir() and (
            self.config_path.is_file()
            or self.hparams_path.is_file()
            or bool(self.event_files())
            or bool(self.checkpoint_files())
            or self.adapter_dir.exists()
        )

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

    def settings(self) -> dict[str, object]:
        """``config.yaml`` flattened to dotted keys, without :data:`NOT_SETTINGS`."""
        flat: dict[str, object] = {}

        def walk(value, key: str) -> None:
            if any(key == k or key.startswith(k + ".") for k in NOT_SETTINGS):
                return
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(v, f"{key}.{k}" if key else str(k))
            else:
                flat[key] = value

        walk(self.config(), "")
        return flat

    def settings_hash(self) -> str:
        """A hash of :meth:`settings`: equal for the seeds of one configuration (and for a run
        and its resumed continuation), different when any other setting differs."""
        text = json.dumps(self.settings(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def seed(self) -> int | None:
        """``seed_everything`` of the run's config."""
        seed = self.config().get("seed_everything")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    def task(self) -> Task | None:
        """The run's task with its fields, from ``config.yaml`` (None without one)."""
        spec = (self.config().get("data") or {}).get("task")
        return task_from_config(spec) if spec is not None else None

    def scalar_events(self) -> dict[str, list]:
        """Every scalar event the run logged (read once): tag -> events in wall-time order."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(self.path), size_guidance={"scalars": 0})
        accumulator.Reload()
        return {
            tag: sorted(accumulator.Scalars(tag), key=_wall_time)
            for tag in accumulator.Tags()["scalars"]
        }

    def scalars(self, events: dict[str, list] | None = None) -> dict[str, list[tuple[int, float]]]:
        """Every scalar the run logged: tag -> ``(step, value)`` in step order, one per step
        (from ``events`` when the caller read them already, see :meth:`scalar_events`)."""
        events = self.scalar_events() if events is None else events
        # A resumed run logs the steps after its checkpoint again: the later value counts.
        return {
            tag: sorted({e.step: e.value for e in tagged}.items()) for tag, tagged in events.items()
        }

    def seconds_per_step(
        self, tag: str = "train/loss", events: dict[str, list] | None = None
    ) -> float | None:
        """Median wall-clock seconds of a training step: between consecutive logged points of
        ``tag`` (every ``log_every_n_steps``), elapsed time over steps taken; the median leaves out
        the intervals an evaluation or a checkpoint falls in. None with fewer than two points."""
        events = self.scalar_events() if events is None else events
        rates = [
            (later.wall_time - earlier.wall_time) / (later.step - earlier.step)
            for earlier, later in itertools.pairwise(events.get(tag, []))
            if later.step > earlier.step
        ]
        return statistics.median(rates) if rates else None


def _wall_time(event) -> float:
    return event.wall_time


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
