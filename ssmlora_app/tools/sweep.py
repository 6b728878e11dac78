"""``ssmlora sweep``: a grid of configs x adapters x seeds, run one after another into one runs
folder (or printed, one command per line, for a cluster scheduler); ``ssmlora report`` reads it."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

from ssmlora_app.adapters import ADAPTERS, AdapterConfig, get_method
from ssmlora_app.errors import SsmloraError
from ssmlora_app.outputs import check_output_dir
from ssmlora_app.run import RunFolder

ADAPTER_FILE_SUFFIXES = (".yaml", ".yml")


def adapter_override(spec: str) -> list[str]:
    """The arguments that put ``spec``'s adapter in a run: ``--model.adapter=...`` for a
    registered adapter name (its default config) or an adapter file (YAML ``{class_path: ...,
    init_args: {...}}``, one variant per file, e.g. ``configs/real/adapters/minilm/lora_qv.yaml``),
    then the file's own ``overrides`` (the variant's recipe, e.g. its learning rate). Every field
    of the config is spelt out, defaults filled in, so no field of the config file's adapter
    carries over to another adapter class."""
    overrides: list[str] = []
    if spec.endswith(ADAPTER_FILE_SUFFIXES):
        cls, init_args, overrides = _adapter_file(Path(spec))
    else:
        cls, init_args = get_method(spec).config_cls, {}
    try:
        config = cls(**init_args)
    except TypeError as err:
        raise SsmloraError(f"sweep: adapter {spec}: {err}.") from None
    config.validate()
    class_path = f"{cls.__module__}.{cls.__qualname__}"
    adapter = {"class_path": class_path, "init_args": dataclasses.asdict(config)}
    return ["--model.adapter=" + json.dumps(adapter), *overrides]


def adapter_label(spec: str) -> str:
    """The run-name suffix of an adapter in a sweep: its name, or its file's stem."""
    return Path(spec).stem if spec.endswith(ADAPTER_FILE_SUFFIXES) else spec


def _adapter_file(path: Path) -> tuple[type, dict, list[str]]:
    """The config class, init_args and overrides of an adapter file."""
    import importlib

    import yaml

    if not path.is_file():
        raise SsmloraError(f"sweep: no adapter file {path}.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SsmloraError(f"sweep: {path} is not YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("class_path"), str):
        raise SsmloraError(
            f"sweep: {path} must hold an adapter section: {{class_path: ..., init_args: {{...}}}}."
        )
    unknown = sorted(set(data) - {"class_path", "init_args", "overrides"})
    overrides = data.get("overrides") or []
    if unknown or not (
        isinstance(overrides, list)
        and all(isinstance(o, str) and o.startswith("--") for o in overrides)
    ):
        raise SsmloraError(
            f"sweep: {path} may hold class_path, init_args and overrides (a list of --key=value "
            f"arguments){f'; not {unknown}' if unknown else ''}."
        )
    module, _, name = data["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise SsmloraError(f"sweep: {path}: cannot import {data['class_path']!r}.") from None
    if not (isinstance(cls, type) and issubclass(cls, AdapterConfig)):
        raise SsmloraError(f"sweep: {path}: {data['class_path']} is not an adapter config class.")
    return cls, dict(data.get("init_args") or {}), list(overrides)


def sweep_commands(
    configs: list[str],
    seeds: list[int],
    adapters: list[str] | None,
    runs_dir: str,
    overrides: list[str],
) -> list[list[str]]:
    """One ``ssmlora fit`` argument list per (config, adapter, seed); runs are logged to the run
    folder ``<runs_dir>/<config>[_<adapter>]/seed<seed>``."""
    for config in configs:
        if not Path(config).is_file():
            raise SsmloraError(f"sweep: no config file {config}.")
    for name in adapters or []:
        if not name.endswith(ADAPTER_FILE_SUFFIXES) and name not in ADAPTERS:
            raise SsmloraError(
                f"sweep: unknown adapter {name!r}; known: {sorted(ADAPTERS)}, or an adapter "
                "YAML file."
            )
    labels = [adapter_label(a) for a in adapters or []]
    if len(set(labels)) != len(labels):
        raise SsmloraError(f"sweep: two adapters share a run name: {labels}.")
    overrides_of = {a: adapter_override(a) for a in adapters or []}  # checks every file first
    if not seeds:
        raise SsmloraError("sweep: give at least one seed.")
    commands = []
    for config in configs:
        for adapter in adapters or [None]:
            name = Path(config).stem + (f"_{adapter_label(adapter)}" if adapter else "")
            for seed in seeds:
                command = ["fit", "--config", config, f"--seed_everything={seed}"]
                command.append(f"--data.shuffle_seed={seed}")  # the seed varies the data order too
                if adapter:
                    command += overrides_of[adapter]
                command += RunFolder.at(runs_dir, name, f"seed{seed}").logger_args()
                commands.append([*command, *overrides])
    return commands


def _run_folder(command: list[str]) -> RunFolder:
    """The run folder a sweep command logs to (from its :meth:`RunFolder.logger_args`)."""
    args = dict(a.removeprefix("--trainer.logger.init_args.").split("=", 1) for a in command
                if a.startswith("--trainer.logger.init_args."))  # fmt: skip
    return RunFolder.at(args["save_dir"], args["name"], args["version"])


def plan(command: list[str]) -> tuple[str, list[str]]:
    """What a (re)run of a sweep does with one command: ``run`` it (a new run), ``resume`` it from
    its folder's last.ckpt (a run that was stopped: the command gains ``--ckpt_path``), or
    ``skip`` it (finished: it wrote its adapter). A folder with logs but no checkpoint is run, and
    fit refuses it naming the folder (nothing is overwritten)."""
    folder = _run_folder(command)
    if folder.has_adapter():
        return "skip", command
    if folder.last_checkpoint.is_file():
        return "resume", [*command, f"--ckpt_path={folder.last_checkpoint}"]
    return "run", command


def run_sweep(commands: list[list[str]], dry_run: bool) -> int:
    """Print the commands (``dry_run``) or run them one after another; returns the number that
    failed (a failed run does not stop the others). Finished runs are skipped and stopped ones
    resumed (see :func:`plan`), so rerunning a sweep completes it without redoing anything."""
    failed = 0
    for command in commands:
        action, command = plan(command)
        if action == "skip":
            print(f"sweep: skipped, finished: {_run_folder(command).path}", flush=True)
            continue
        line = shlex.join(["ssmlora", *command])
        print(line, flush=True)
        if not dry_run:
            result = subprocess.run([sys.executable, "-m", "ssmlora_app", *command])
            if result.returncode != 0:
                failed += 1
                print(f"sweep: failed ({result.returncode}): {line}", file=sys.stderr, flush=True)
    return failed


def sweep(
    configs: list[str],
    seeds: list[int] = [0, 1, 2],  # noqa: B006 (a jsonargparse default, never mutated)
    adapters: list[str] | None = None,
    runs: str = "runs/sweep",
    overrides: list[str] | None = None,
    dry_run: bool = False,
) -> None:
    """Fit every config x adapter x seed into one runs folder, one run after another (or print the
    commands for a cluster scheduler); then ``ssmlora report --runs RUNS``.

    Args:
        configs: Config files (e.g. ``[configs/roberta_sst2_lora.yaml, configs/roberta_rte_lora.yaml]``).
        seeds: Seeds (``seed_everything``) of each cell.
        adapters: Adapters replacing each config's own: registered names
            (``ssmlora_app.adapters.ADAPTERS``: lora, ssmlora, hrm, sdt, full, bitfit, ...) with
            their default config, or adapter YAML files (``{class_path, init_args}``, one variant
            per file, named by the file's stem, with optional ``overrides``: that variant's own
            arguments, e.g. its learning rate); null keeps the configs' own adapters.
        runs: Runs folder; each run logs to ``RUNS/<config>[_<adapter>]/seed<seed>``. A rerun
            skips the runs that finished and resumes those that stopped from their last.ckpt.
        overrides: Extra arguments for every run (e.g. ``["--trainer.max_epochs=3"]``); they
            come last, so they win over an adapter file's own overrides.
        dry_run: Print the commands, one per line, instead of running them.
    """
    check_output_dir(runs, "--runs", overwrite=None)
    commands = sweep_commands(configs, seeds, adapters, runs, overrides or [])
    failed = run_sweep(commands, dry_run)
    if failed:
        raise SsmloraError(f"sweep: {failed} of {len(commands)} runs failed (see above).")
