"""``ssmlora sweep``: a grid of configs x adapters x seeds, run one after another into one runs
folder (or printed, one command per line, for a cluster scheduler); ``ssmlora report`` reads it."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

from ssmlora_app.adapters import ADAPTERS, get_method
from ssmlora_app.errors import SsmloraError
from ssmlora_app.run import RunFolder


def adapter_override(name: str) -> str:
    """``--model.adapter=...`` for the registered adapter ``name``: its config class's path and
    every field of its default config spelt out (so no field of the config file's adapter carries
    over to another adapter class)."""
    method = get_method(name)
    config = method.config_cls()
    config.validate()
    init_args = dataclasses.asdict(config)
    return "--model.adapter=" + json.dumps(
        {"class_path": method.class_path, "init_args": init_args}
    )


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
        if name not in ADAPTERS:
            raise SsmloraError(f"sweep: unknown adapter {name!r}; known: {sorted(ADAPTERS)}.")
    if not seeds:
        raise SsmloraError("sweep: give at least one seed.")
    commands = []
    for config in configs:
        for adapter in adapters or [None]:
            name = Path(config).stem + (f"_{adapter}" if adapter else "")
            for seed in seeds:
                command = ["fit", "--config", config, f"--seed_everything={seed}"]
                command.append(f"--data.shuffle_seed={seed}")  # the seed varies the data order too
                if adapter:
                    command.append(adapter_override(adapter))
                command += RunFolder.at(runs_dir, name, f"seed{seed}").logger_args()
                commands.append([*command, *overrides])
    return commands


def run_sweep(commands: list[list[str]], dry_run: bool) -> int:
    """Print the commands (``dry_run``) or run them one after another; returns the number that
    failed (a failed run does not stop the others)."""
    failed = 0
    for command in commands:
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
        adapters: Registered adapter names (``ssmlora_app.adapters.ADAPTERS``: lora, ssmlora,
            hrm, sdt, ...) replacing each config's adapter with its default config; null keeps
            the configs' own adapters.
        runs: Runs folder; each run logs to ``RUNS/<config>[_<adapter>]/seed<seed>``.
        overrides: Extra arguments for every run (e.g. ``["--trainer.max_epochs=3"]``).
        dry_run: Print the commands, one per line, instead of running them.
    """
    commands = sweep_commands(configs, seeds, adapters, runs, overrides or [])
    failed = run_sweep(commands, dry_run)
    if failed:
        raise SsmloraError(f"sweep: {failed} of {len(commands)} runs failed (see above).")
