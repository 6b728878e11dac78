"""A short fit as a user runs it (a fresh ``python -m ssmlora_app`` process): what it prints
carries none of the libraries' noise; with ``--trainer.logger false`` and ``--trainer.precision 64``
it writes its run folder under ``runs/ssmlora/`` (never the current directory), a second such run
takes the next folder, and the adapter is float32; the adapter files and ``ssmlora export``'s
merged model get the mode the umask gives a new file (issue 16)."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ssmlora_app.cli import main
from tests.conftest import REPO

QUICK = ["--data.max_train_samples=64", "--data.max_eval_samples=32", "--trainer.max_steps=3"]
NOISE = (
    "FLOPs",  # Lightning's model summary table (its FLOPs column reads 0)
    "v_num",  # the logger's version in the progress bar
    "hp_metric",  # TensorBoard's placeholder metric, always -1
    "mamba_ssm",  # transformers' CUDA-kernel install hint, on a CPU
    "falling back to its reference",
    "diagnostics",  # another adapter method's diagnostics callback
    "Warning",
    "deprecat",
    "Tip:",
    "TPU available",
    "Traceback",
)


def _fit(cwd, *args: str, umask: int = 0o022) -> str:
    """``ssmlora fit`` in a new process (run from ``cwd``, under ``umask``): its stdout + stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ssmlora_app", "fit", *args, *QUICK],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.umask(umask),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def _assert_quiet(output: str) -> None:
    assert "Adapter saved to" in output and "val/accuracy = " in output, output  # it did print
    found = [noise for noise in NOISE if noise.lower() in output.lower()]
    assert not found, f"noise {found} in:\n{output}"


def _digests(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_mamba_fit_with_a_logger_prints_no_noise(tmp_path):
    """SDT on a small Mamba (whose CUDA kernels transformers would advertise), TensorBoard logger,
    progress bar on: no noise in the output, no hp_metric in the event files."""
    config = str(REPO / "configs" / "quickstart_sdt.yaml")
    output = _fit(tmp_path, "--config", config, "--trainer.logger.init_args.save_dir=runs",
                  "--model.adapter.init_args.warmup_steps=1")  # fmt: skip
    _assert_quiet(output)
    run = tmp_path / "runs" / "quickstart_sdt" / "version_0"
    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "val/accuracy" in tags and not [t for t in tags if "hp_metric" in t], tags


@pytest.mark.slow
def test_two_fits_without_a_logger_at_precision_64(tmp_path):
    """``--trainer.logger false``: adapter/, checkpoints/ and config.yaml go to
    runs/ssmlora/version_N, never the current directory, and a second run does not touch the
    first. ``--trainer.precision 64`` trains in float64 and stores a float32 adapter. Under umask
    027 the adapter files are 0640 (safetensors alone writes 0600)."""
    args = ["--config", str(REPO / "configs" / "quickstart_random.yaml"),
            "--trainer.logger", "false", "--trainer.precision", "64"]  # fmt: skip
    _assert_quiet(_fit(tmp_path, *args, umask=0o027))
    first = tmp_path / "runs" / "ssmlora" / "version_0"
    before = _digests(first)
    assert {"config.yaml", "adapter/adapter_model.safetensors", "checkpoints/last.ckpt"} <= set(
        before
    )
    _assert_quiet(_fit(tmp_path, *args))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing in the current dir
    assert sorted(p.name for p in (tmp_path / "runs" / "ssmlora").iterdir()) == [
        "version_0",
        "version_1",
    ]
    assert _digests(first) == before, "the second run changed the first"
    checkpoint = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    lora = {k: v for k, v in checkpoint["state_dict"].items() if ".lora_" in k}
    assert lora and {v.dtype for v in lora.values()} == {torch.float64}  # it did train in fp64
    for run in ("version_0", "version_1"):
        adapter = load_file(
            tmp_path / "runs" / "ssmlora" / run / "adapter" / "adapter_model.safetensors"
        )
        assert {v.dtype for v in adapter.values()} == {torch.float32}, run
    for path in (first / "adapter").iterdir():
        assert path.stat().st_mode & 0o777 == 0o640, path


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_export_writes_its_files_by_the_umask(tmp_path, capsys, umask):
    """``ssmlora export``'s adapter/ and merged/ (safetensors, config, tokenizer files) get
    ``0o666 & ~umask``: 0644 under 022, 0600 under 077."""
    main(["fit", "--config", str(REPO / "configs" / "quickstart_random.yaml"),
          f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
          "--trainer.enable_progress_bar=false", *QUICK])  # fmt: skip
    run = tmp_path / "runs" / "quickstart_random" / "version_0"
    old = os.umask(umask)
    try:
        main(["export", "--run", str(run), "--out", str(tmp_path / "export")])
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "export").rglob("*") if p.is_file()]
    folders = {p.parent.name for p in written}
    assert {"adapter", "merged"} <= folders
    assert any(p.name == "model.safetensors" for p in written)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
