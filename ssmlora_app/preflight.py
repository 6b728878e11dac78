"""Checks and placement of a parsed ``fit``/``validate``/``test``/``predict`` command, before any
work: a bad input is one ``ssmlora: error:`` line, and nothing already written is overwritten.

Where a command writes (see :mod:`ssmlora_app.run.folder` for a run folder's layout):

- ``fit`` writes one new run folder, ``<save_dir>/<name>/version_N`` (the next N) or the version
  given. A folder that already holds a run is refused, unless ``--ckpt_path`` is one of its own
  checkpoints (a resume; without a version, a resume goes back into its checkpoint's folder). With
  ``--trainer.logger false`` the run folder is ``trainer.default_root_dir`` when set, else
  ``runs/ssmlora/version_N``, never the current directory. A fit that fails before its first
  checkpoint removes the folder it created (see :func:`remove_failed_run`).
- ``validate``/``test``/``predict`` evaluate a trained model: ``--ckpt_path`` or
  ``--model.init_adapter_from`` (else ``--allow_untrained true``). They create no run folder: they
  log into ``<run>/<stage>`` of the run they evaluate, and ``predict`` writes to a new
  ``<run>/predictions[-N]`` folder (or ``--predictions.output_dir``: a new or empty folder, or
  ``--predictions.overwrite true``).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from ssmlora_app.errors import SsmloraError
from ssmlora_app.outputs import check_output_dir
from ssmlora_app.run import CheckpointInfo, RunFolder, inspect_checkpoint
from ssmlora_app.run.checkpoint import run_folder_of

NO_LOGGER_NAME = "ssmlora"
"""Run folders of fits without a logger: ``runs/ssmlora/version_N``."""
SPECIAL_CKPT_PATHS = ("best", "hpc", "registry")


def check_config_files(argv: list[str]) -> None:
    """Each ``--config`` file exists and holds a YAML mapping (before the parser reads it)."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        path = Path(value).expanduser()
        if value.lstrip().startswith("{"):  # an inline YAML/JSON config
            continue
        if not path.exists():
            raise SsmloraError(f"--config {value}: no such file.")
        if path.is_dir():
            raise SsmloraError(f"--config {value} is a folder: give a YAML file.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise SsmloraError(f"--config {value}: cannot read it ({err}).") from None
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise SsmloraError(
                f"--config {value} is not valid YAML{line}: {err.problem}."
            ) from None
        if data is None:
            raise SsmloraError(
                f"--config {value} is empty: a config holds trainer, model and data sections "
                "(see configs/quickstart.yaml)."
            )
        if not isinstance(data, dict):
            raise SsmloraError(
                f"--config {value} holds a {type(data).__name__}, not a mapping of sections "
                "(trainer, model, data; see configs/quickstart.yaml)."
            )


def _dir_logger(trainer: Namespace) -> Namespace | None:
    """The first logger with a ``save_dir`` (TensorBoard, CSV): its folder is the run's."""
    logger = trainer.get("logger")
    for item in logger if isinstance(logger, list) else [logger]:
        init_args = getattr(item, "init_args", None)
        if init_args is not None and "save_dir" in init_args:
            return item
    return None


def _version_name(version) -> str:
    return f"version_{version}" if isinstance(version, int) else str(version)


def check_trainer_limits(trainer: Namespace) -> None:
    """A fit must train: refuse limits that allow no step (its adapter would be the untrained
    initialisation, saved as the run's result)."""
    zero = [
        f"trainer.{key}={trainer.get(key)}"
        for key in ("max_epochs", "max_steps", "limit_train_batches")
        if trainer.get(key) is not None and trainer.get(key) == 0 and trainer.get(key) is not False
    ]
    if zero:
        raise SsmloraError(
            f"{zero[0]} trains no step: the run's adapter would be its untrained initialisation. "
            "To evaluate a trained model use validate --ckpt_path; to train, allow at least one step."
        )


def check_fsdp_devices(trainer) -> None:
    """FSDP fits need two or more processes. On one, FSDP falls back to ``NO_SHARD``, which
    shards nothing, and with ``use_orig_params`` (Lightning's setting) torch then leaves the
    frozen units' parameters out of the state dict after a training step: the first checkpoint
    fails with an assertion, after the work (seen on an H100, torch 2.11; on CPU, torch 2.13)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy) and trainer.world_size < 2:
        raise SsmloraError(
            "FSDP on one device shards nothing, and torch's FSDP then cannot checkpoint a "
            "partly frozen model: use the default strategy on one device, or FSDP on two or more "
            "(--trainer.devices)."
        )


def check_init_adapter_from(model: Namespace) -> None:
    """``model.init_adapter_from`` is an adapter folder (before the backbone is loaded)."""
    value = model.get("init_adapter_from")
    if value is None:
        return
    path = Path(value).expanduser()
    if not (path / "adapter_config.json").is_file():
        what = (
            "a file"
            if path.is_file()
            else "no adapter folder"
            if not path.is_dir()
            else ("a folder without adapter_config.json")
        )
        hint = " (a run folder: give its adapter/)" if (path / "adapter").is_dir() else ""
        raise SsmloraError(
            f"--model.init_adapter_from={value} is {what}{hint}: give an adapter folder written by "
            "ssmlora (runs/<name>/version_N/adapter, or the out of ssmlora export/import/reduce)."
        )


def check_optimizer(model: Namespace) -> None:
    """Build the optimizer (and scheduler) on a stand-in parameter: torch's own checks of lr,
    betas, weight decay ... as one line, before the backbone is loaded."""
    spec = model.get("optimizer")
    if not isinstance(getattr(spec, "class_path", None), str):
        return
    module, _, name = spec.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    init_args = dict(spec.get("init_args") or {})
    try:
        optimizer = cls([torch.nn.Parameter(torch.zeros(1))], **init_args)
    except (ValueError, TypeError) as err:
        raise SsmloraError(f"model.optimizer ({name}): {err}.") from None
    scheduler = model.get("scheduler")
    if not isinstance(getattr(scheduler, "class_path", None), str):
        return
    module, _, name = scheduler.class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    try:
        cls(optimizer, 100, **dict(scheduler.get("init_args") or {}))
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise SsmloraError(f"model.scheduler ({name}): {err}.") from None


@dataclass
class Placement:
    """Where a command reads and writes."""

    run: RunFolder | None
    """The run folder: the one fit writes, or the one an evaluation reads."""
    created: bool = False
    """Fit writes a folder that did not exist (removed again if it fails leaving nothing)."""
    resume: bool = False


def resolve_ckpt_path(config: Namespace, subcommand: str) -> CheckpointInfo | None:
    """Read ``--ckpt_path`` (a file written by fit; ``last``: the given run folder's last.ckpt)."""
    value = config.get("ckpt_path")
    if value is None:
        return None
    if value in SPECIAL_CKPT_PATHS:
        raise SsmloraError(
            f"--ckpt_path={value}: give a checkpoint file (runs/<name>/version_N/checkpoints/"
            "last.ckpt)."
        )
    if value == "last":
        logger = _dir_logger(config.trainer)
        version = logger.init_args.get("version") if logger is not None else None
        if subcommand != "fit" or version is None:
            raise SsmloraError(
                "--ckpt_path=last needs the run: give the file (runs/<name>/version_N/checkpoints/"
                "last.ckpt), or for fit the run's version (--trainer.logger.init_args.version)."
            )
        args = logger.init_args
        value = str(
            RunFolder.at(args.save_dir, args.name or "", _version_name(version)).last_checkpoint
        )
        config.ckpt_path = value
    return inspect_checkpoint(value)


def place_fit(config: Namespace, checkpoint: CheckpointInfo | None) -> Placement:
    """The run folder of a fit (set in the logger or ``default_root_dir``); refuses a folder that
    already holds a run unless the fit resumes from one of its checkpoints."""
    trainer = config.trainer
    logger = _dir_logger(trainer)
    resumed_run = checkpoint.run if checkpoint is not None else None
    if logger is not None:
        args = logger.init_args
        if args.get("version") is not None:
            run = RunFolder.at(args.save_dir, args.get("name") or "", _version_name(args.version))
        elif resumed_run is not None:
            run = RunFolder(resumed_run)
            args.save_dir, args.name, args.version = str(run.path.parent.parent), run.path.parent.name, run.path.name  # fmt: skip
        else:
            run = RunFolder.next_version(args.save_dir, args.get("name") or "")
            args.version = run.path.name
        if hasattr(args, "default_hp_metric"):
            args.default_hp_metric = False  # TensorBoard's hp_metric would always read -1
    else:
        if trainer.get("default_root_dir"):
            run = RunFolder(Path(trainer.default_root_dir).expanduser())
        elif resumed_run is not None:
            run = RunFolder(resumed_run)
        else:
            run = RunFolder.next_version("runs", NO_LOGGER_NAME)
        trainer.default_root_dir = str(run.path)
    resume = resumed_run is not None and run.path.resolve() == resumed_run
    if rank_zero_only.rank != 0:
        # A DDP process launched after rank 0 (or beside it under torchrun/SLURM) finds the folder
        # rank 0 is creating: rank 0 alone checks it and alone owns (and may remove) it.
        return Placement(run, created=False, resume=resume)
    if run.holds_run() and not resume:
        last = run.last_checkpoint
        how = (
            f"resume it with --ckpt_path {last}"
            if last.is_file() and not run.has_adapter()
            else "it is finished"
            if run.has_adapter()
            else "it left no checkpoint: delete the folder to start it again"
        )
        raise SsmloraError(
            f"{run.path} already holds a run ({how}). Nothing is overwritten: give a new version "
            "(--trainer.logger.init_args.version) or leave it unset for the next free one."
        )
    if resume:
        rank_zero_info(f"Resuming the run in {run.path} from {checkpoint.path.name}")
    return Placement(run, created=not run.path.exists(), resume=resume)


def check_resume_trains(checkpoint: CheckpointInfo, trainer: Namespace) -> None:
    """Refuse a resume that would train no step (the checkpoint already reached the limits)."""
    if checkpoint.finished(trainer.get("max_epochs"), trainer.get("max_steps")):
        raise SsmloraError(
            f"--ckpt_path={checkpoint.path} already trained to the end (epoch "
            f"{checkpoint.epochs_started}, step {checkpoint.global_step}; trainer.max_epochs="
            f"{trainer.get('max_epochs')}, max_steps={trainer.get('max_steps')}): a fit would train "
            "no step. Raise trainer.max_epochs / max_steps to train on, or evaluate it with "
            "validate / predict --ckpt_path."
        )


def place_evaluation(
    config: Namespace, subcommand: str, checkpoint: CheckpointInfo | None
) -> Placement:
    """The run an evaluation reads (its checkpoint's or its adapter's), where it logs
    (``<run>/<stage>``) and, for predict, the predictions folder."""
    init_from = config.model.get("init_adapter_from")
    if checkpoint is None and init_from is None and not config.get("allow_untrained"):
        raise SsmloraError(
            f"{subcommand} needs a trained model: give --ckpt_path runs/<name>/version_N/"
            "checkpoints/last.ckpt (or --model.init_adapter_from an adapter folder); "
            "--allow_untrained true evaluates the untrained adapter and head on purpose."
        )
    run = None
    if checkpoint is not None and checkpoint.run is not None:
        run = RunFolder(checkpoint.run)
    elif checkpoint is None and init_from is not None and Path(init_from).is_dir():
        found = run_folder_of(Path(init_from).expanduser())
        run = RunFolder(found) if found is not None else None
    trainer = config.trainer
    logger = _dir_logger(trainer)
    if run is not None and logger is not None:
        args = logger.init_args
        args.save_dir, args.name, args.version = str(run.path), "", subcommand
        if hasattr(args, "default_hp_metric"):
            args.default_hp_metric = False
    elif run is not None:
        trainer.default_root_dir = str(run.stage_dir(subcommand))
    else:
        trainer.logger = False  # nothing to log into: the metrics are printed
    if subcommand == "predict":
        predictions = config.predictions
        if predictions.get("output_dir"):
            check_output_dir(
                predictions.output_dir,
                "--predictions.output_dir",
                predictions.get("overwrite", False),
                "--predictions.overwrite",
            )
        elif run is not None:
            predictions.output_dir = str(run.new_predictions_dir())
        else:
            raise SsmloraError(
                "predict of a model outside a run folder needs --predictions.output_dir (a new "
                "folder for the prediction files)."
            )
    return Placement(run)


def check_adapter_head(model) -> None:
    """An evaluation from ``model.init_adapter_from`` needs the folder's head for this task (an
    untrained head's predictions are noise) and its classes in the task's order."""
    directory = model.init_adapter_from
    info = model.task_info
    if not model.head_loaded:
        raise SsmloraError(
            f"--model.init_adapter_from={directory}: its head does not fit task {info.task!r} "
            f"({info.num_labels} outputs), so the evaluation would use an untrained head. Give an "
            "adapter trained on this task, or its run's --ckpt_path."
        )
    try:
        meta = json.loads((Path(directory) / "adapter_config.json").read_text())
        saved = meta.get("ssmlora", {}).get("label_names")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved and info.label_names and list(saved) != list(info.label_names):
        raise SsmloraError(
            f"--model.init_adapter_from={directory} was trained with the classes {list(saved)} "
            f"(in id order) but the data gives {list(info.label_names)}: its predictions would "
            "be mislabelled."
        )


def remove_failed_run(placement: Placement) -> None:
    """After a failed fit: remove the run folder it created when it holds no checkpoint and no
    adapter (nothing to resume or export), so failed fits leave no ``version_N`` behind."""
    run = placement.run
    if run is None or not placement.created or not run.path.is_dir():
        return
    if run.checkpoint_files() or run.adapter_dir.exists():
        return
    shutil.rmtree(run.path, ignore_errors=True)
    parent = run.path.parent
    if parent.is_dir() and not any(parent.iterdir()):  # the <name> folder it made, now empty
        os.rmdir(parent)
