"""``ssmlora fit`` end to end against the bare train step: what the fit loop itself costs.

Each round runs a real ``ssmlora fit`` (the same CLI, config parsing, callbacks, logger,
progress bar and data loading as a user's run; validation off, LoRA on the preset's targets, the
``quickstart`` task read through the backbone's own tokenizer) in this process, with one extra
callback, :class:`StepClock`, that reads the clock at the start of every training batch and
keeps the batches. The fit's step time is the mean interval between batch starts after
``warmup`` steps (everything the loop does per step: data loading, forward, backward, AdamW,
the LR schedule, logging, callbacks). Then, on the same model, the bare step replays exactly
those batches in a plain loop (``zero_grad``, the objective's loss, ``backward``, the optimizer
``ssmlora fit`` builds, ``step``). Rounds alternate fit and bare; the overhead is the median over
rounds of ``fit / bare − 1``. Start-up (model loading, tokenisation) and the end of the fit
(checkpoint, adapter export) are outside the timed window and reported separately.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import yaml

from ssmlora_app.optim import build_optimizer
from ssmlora_app.tools.bench.measure import Timing
from ssmlora_app.tools.bench.presets import FitSettings


class StepClock(L.Callback):
    """Clock readings at the start of every training batch (synchronised on CUDA) and the
    batches themselves (for the bare replay)."""

    def __init__(self, clock: Callable[[], float], device: torch.device):
        self.clock = clock
        self.device = device
        self.starts: list[float] = []
        self.batches: list = []
        self.setup_s: float | None = None
        """Seconds from the CLI's start to the first batch (parsing, model and data set-up)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.starts.append(self.clock())
        self.batches.append(batch)


def fit_config(path: Path, settings: FitSettings, targets: tuple[str, ...], work: Path,
               device: torch.device) -> dict:  # fmt: skip
    """The ``ssmlora fit`` config of one round: LoRA r=8 on ``targets``, AdamW with the linear
    warm-up schedule (the quickstart's), validation off, logs under ``work``."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "gpu" if device.type == "cuda" else "cpu",
            "devices": 1,
            "max_steps": settings.warmup + settings.steps + 1,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": settings.log_every_n_steps,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(work), "name": "fit_overhead"},
            },
        },
        "model": {
            "backbone": {"name_or_path": str(path)},
            "adapter": {
                "class_path": "ssmlora_app.adapters.LoRAConfig",
                "init_args": {"target_modules": list(targets), "r": 8, "alpha": 16},
            },
            "optimizer": {
                "class_path": "torch.optim.AdamW",
                "init_args": {"lr": 1e-3, "weight_decay": 0.01},
            },
        },
        "data": {
            "task": settings.task,
            "max_length": settings.max_length,
            "batch_size": settings.batch_size,
        },
    }


def _fit_round(config: Path, clock: Callable[[], float], device: torch.device):
    """One ``ssmlora fit``; returns its StepClock, the fitted LightningModule and the tokenizer."""
    from ssmlora_app.cli import build_cli  # the tools' side of the CLI, imported when run

    built = clock()
    # the fit prints as it would for a user (model summary, progress bar), on stderr: stdout
    # stays the bench's table
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        cli = build_cli(["--config", str(config)], run=False)
        step_clock = StepClock(clock, device)
        cli.trainer.callbacks.append(step_clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    step_clock.setup_s = step_clock.starts[0] - built
    return step_clock, cli.model, cli.datamodule.tokenizer


def _bare_round(module, batches: list, warmup: int, clock, device: torch.device) -> float:
    """Mean seconds per bare step over ``batches[warmup:]`` (after the first ``warmup``)."""
    model, objective = module.to(device).model, module.objective  # Lightning's teardown: CPU
    optimizer = build_optimizer(module.optimizer_factory, model)
    model.train()

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        objective.training_loss(model, batch).backward()
        optimizer.step()

    for batch in batches[:warmup]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    for batch in batches[warmup:]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (clock() - start) / len(batches[warmup:])


def _input_ids(batch) -> torch.Tensor:
    """The ``(B, L)`` token ids of a classification or language-modelling batch."""
    inputs = getattr(batch, "inputs", None)
    return inputs["input_ids"] if inputs is not None else batch.input_ids


def measure_fit_overhead(
    path: Path,
    settings: FitSettings,
    targets: tuple[str, ...],
    rounds: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str], object] | None = None,
) -> dict:
    """``ssmlora fit``'s step time against the bare step on the same batches (module docstring)."""
    fit_s, bare_s, setup_s, ratios, lengths = [], [], [], [], []
    example = None
    with tempfile.TemporaryDirectory(prefix="ssmlora_fit_overhead_") as tmp:
        work = Path(tmp)
        config = work / "fit.yaml"
        config.write_text(yaml.safe_dump(fit_config(path, settings, targets, work, device)))
        for round_ in range(rounds):
            if progress:
                progress(f"ssmlora fit against the bare step: round {round_ + 1} of {rounds} ...")
            step_clock, module, tokenizer = _fit_round(config, clock, device)
            window = step_clock.starts[settings.warmup :]
            fit = (window[-1] - window[0]) / (len(window) - 1)
            # the batches whose steps were timed (the last start only closed the window)
            batches = step_clock.batches[: settings.warmup + settings.steps]
            bare = _bare_round(module, batches, settings.warmup, clock, device)
            fit_s.append(fit)
            bare_s.append(bare)
            setup_s.append(step_clock.setup_s)
            ratios.append(fit / bare)
            ids = [_input_ids(b) for b in batches[settings.warmup :]]
            lengths += [i.shape[1] for i in ids]
            if example is None:
                example = tokenizer.decode(ids[0][0], skip_special_tokens=True)
            del module, step_clock, batches
    return {
        "method": "lora",
        "task": settings.task,
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "warmup": settings.warmup,
        "steps": settings.steps,
        "rounds": rounds,
        "mean_padded_length": statistics.fmean(lengths),
        "example": example,
        "fit_step_s": asdict(Timing.of(fit_s)),
        "bare_step_s": asdict(Timing.of(bare_s)),
        "fit_steps_per_s": 1 / statistics.median(fit_s),
        "bare_steps_per_s": 1 / statistics.median(bare_s),
        "overhead": statistics.median(ratios) - 1,
        "overhead_per_round": [r - 1 for r in ratios],
        "setup_s": asdict(Timing.of(setup_s)),
    }
