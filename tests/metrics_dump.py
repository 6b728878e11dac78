"""Runs the ssmlora CLI; ``DumpMetrics`` writes the final validation metrics to $METRICS_JSON.

Run as ``python -m tests.metrics_dump fit ...`` so Lightning's DDP launcher can start the other
processes with the same command.
"""

import json
import os
import signal

from lightning.pytorch.callbacks import Callback

from ssmlora_app.cli import main


class DumpMetrics(Callback):
    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")
            }
            with open(os.environ["METRICS_JSON"], "w") as f:
                json.dump(metrics, f)


if __name__ == "__main__":
    main()


class KillAtStep(Callback):
    """SIGKILLs its own process once ``step`` optimizer steps are done (a crash: nothing runs)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
