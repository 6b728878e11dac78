"""Faults: non-finite losses, SIGTERM, interrupted checkpoint writes."""

import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from ssmlora_app.adapters import LoRAConfig
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.callbacks import SIGTERM_EXIT_CODE, NanGuard, NonFiniteLossError
from ssmlora_app.checkpoint_io import AtomicCheckpointIO
from ssmlora_app.data.datamodule import TaskDataModule
from ssmlora_app.module import AdapterModule
from tests.conftest import REPO, TINY_ROBERTA


class PoisonedModule(AdapterModule):
    """Returns a NaN loss at the given global steps."""

    poison_steps: tuple[int, ...] = ()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step in self.poison_steps else loss


def _fit(tmp_path, guard, poison_steps, **trainer_args):
    data = TaskDataModule(
        task="quickstart", batch_size=16, max_length=32, max_train_samples=96, max_eval_samples=32
    )
    fields = {k: v for k, v in TINY_ROBERTA.items() if k != "vocab_size"}
    module = PoisonedModule(
        BackboneConfig(config=fields), LoRAConfig(r=4), task_info=data.task_info
    )
    module.poison_steps = poison_steps
    trainer = L.Trainer(max_epochs=2, callbacks=[guard], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path,
                        **trainer_args)  # fmt: skip
    trainer.fit(module, data)
    return module, trainer


def test_a_nan_loss_stops_training_naming_the_step(tmp_path):
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at optimizer step 8 \(epoch 1\)"
    ) as err:
        _fit(tmp_path, NanGuard(), poison_steps=(8,))
    assert "gradient_clip_val" in str(err.value)  # suggests remedies
    checkpoints = list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 1  # epoch 0's, written before the bad step, still there
    assert torch.load(checkpoints[0], weights_only=True)["global_step"] == 6


@pytest.mark.parametrize("log_every", [1, 4])
def test_the_stop_check_reads_the_loss_only_when_lightning_logs(tmp_path, log_every, monkeypatch):
    """The bad loss is recorded on the device; the host reads it at logging steps (here every
    step, or every 4th) and before checkpoints."""
    reads = []
    original = NanGuard._raise_if_bad

    def counted(self):
        reads.append(1)
        return original(self)

    monkeypatch.setattr(NanGuard, "_raise_if_bad", counted)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at optimizer step 8 \(epoch 1\)"):
        _fit(tmp_path, NanGuard(), poison_steps=(8,), log_every_n_steps=log_every)
    # The bad loss is computed in the batch that ends with global_step 9. Checked after every
    # batch: at steps 1..9 (raised at 9); every 4th: at 4, 8 and 12 (raised at 12). Plus the
    # check at epoch 0's end and the one before its checkpoint is written.
    batch_checks = 9 if log_every == 1 else 3
    assert len(reads) == batch_checks + 2


def test_skip_batches_drops_only_the_bad_batches(tmp_path):
    guard = NanGuard(skip_batches=True)
    module, trainer = _fit(tmp_path, guard, poison_steps=(3, 7))
    assert guard.skipped == 2
    assert trainer.global_step == 12  # every batch still counts as a step
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert all(torch.isfinite(p).all() for p in trainable)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "ssmlora_app", "fit", "--config", "configs/quickstart_random.yaml",
         "--trainer.max_epochs=100", f"--trainer.logger.init_args.save_dir={tmp_path}",
         "--trainer.logger.init_args.version=run", "--trainer.enable_progress_bar=false"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    run = tmp_path / "quickstart_random" / "run"
    deadline = time.monotonic() + 240
    while not list(run.glob("events.out.tfevents.*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # inside the first epochs
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file(), output
    assert "SIGTERM: checkpoint saved" in output
    assert process.returncode == SIGTERM_EXIT_CODE == 143, output  # the requeue convention
    checkpoint = torch.load(last, weights_only=True)
    assert 0 < checkpoint["global_step"] < 100 * 63


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_adapter(tmp_path):
    """8 steps per epoch, a checkpoint every 5 steps, a kill at step 7: the run resumes from
    step 5 (mid-epoch) and ends with the adapter of a run that was never interrupted."""

    def fit(version, *extra):
        args = [
            "fit", "--config", "configs/quickstart_random.yaml", "--trainer.max_epochs=2",
            "--data.max_train_samples=256", "--data.max_eval_samples=64",
            "--checkpoint.every_n_train_steps=5", f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.logger.init_args.version={version}", "--trainer.enable_progress_bar=false",
            *extra,
        ]  # fmt: skip
        return subprocess.run(
            [sys.executable, "-m", "tests.metrics_dump", *args],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    assert fit("straight").returncode == 0
    killed = fit(
        "resumed",
        "--trainer.callbacks+=tests.metrics_dump.KillAtStep",
        "--trainer.callbacks.init_args.step=7",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = tmp_path / "quickstart_random" / "resumed"
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    resumed = fit("resumed", f"--ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "not resumable" not in resumed.stderr
    a = load_file(
        tmp_path / "quickstart_random" / "straight" / "adapter" / "adapter_model.safetensors"
    )
    b = load_file(run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
