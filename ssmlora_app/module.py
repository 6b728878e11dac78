"""The LightningModule: frozen backbone + adapter, driven by the task's objective; checkpoints,
optimizer groups and the adapter method's own callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ssmlora_app.adapters import (
    AdapterConfig,
    adapter_state_dict,
    count_parameters,
    count_trainable_parameters,
    default_adapter_config,
    get_method,
    load_adapter,
    read_adapter_config,
)
from ssmlora_app.adapters.base import shape_mismatches
from ssmlora_app.backbone import BackboneConfig
from ssmlora_app.errors import SsmloraError
from ssmlora_app.factory import build_model
from ssmlora_app.objectives import objective_for
from ssmlora_app.optim import LinearWarmupDecay, param_groups
from ssmlora_app.run import RunRecord
from ssmlora_app.tasks import TaskInfo

OptimizerFactory = Callable[[Iterable], Optimizer]
SchedulerFactory = Callable[[Optimizer, int], LRScheduler | ReduceLROnPlateau]


class AdapterModule(L.LightningModule):
    """Fine-tunes a frozen backbone through an adapter for one task. What is learned and how it
    is scored is the task's objective (:mod:`ssmlora_app.objectives`, chosen by the data module
    and recorded in ``task_info``): it builds the model, computes the loss, evaluates, predicts.

    Checkpoints hold the adapter, the head and the optimizer/scheduler state, never the frozen
    backbone, which is rebuilt from ``backbone`` on load.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        adapter: AdapterConfig | None = None,
        optimizer: OptimizerFactory = torch.optim.AdamW,
        scheduler: SchedulerFactory | None = LinearWarmupDecay,
        init_adapter_from: str | None = None,
        gradient_checkpointing: bool = False,
        task_info: TaskInfo | None = None,
    ):
        """
        Args:
            backbone: Where the frozen backbone comes from.
            adapter: The adapter and its targets. Null: the config saved in ``init_adapter_from``
                if given, else LoRA r=8, alpha=16 on query/value.
            optimizer: Optimizer class and its arguments (``class_path: torch.optim.AdamW``);
                it receives the trainable parameters only, biases and norms without weight decay.
            scheduler: Learning-rate schedule, stepped every optimizer step; called with the
                optimizer and the trainer's estimated number of steps. Null: constant lr.
            init_adapter_from: A saved adapter folder to start from (e.g. the MNLI adapter for
                MRPC/RTE/STS-B); its head is loaded only if its shape fits this task.
            gradient_checkpointing: Recompute the backbone's activations in the backward pass
                (non-reentrant, so every adapter parameter still gets its gradient through a
                frozen backbone): less memory, about a third more compute.
            task_info: Labels, metrics, objective and tokenizer facts; linked from the data module
                by the CLI.
        """
        super().__init__()
        if task_info is None:
            raise SsmloraError("AdapterModule needs task_info (the CLI links it from data).")
        if adapter is None:  # a saved adapter brings its own config (e.g. a reduced one)
            adapter = (
                read_adapter_config(init_adapter_from)
                if init_adapter_from
                else default_adapter_config()
            )
        self.backbone_config = backbone
        self.adapter_config = adapter
        self.task_info = task_info
        self.objective = objective_for(task_info)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.model = build_model(backbone, adapter, self.objective)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.init_adapter_from = init_adapter_from
        self.head_loaded: bool | None = None
        """Whether ``init_adapter_from``'s head was loaded (None: no such folder given)."""
        if init_adapter_from is not None:
            self._init_from(init_adapter_from)
        self.strict_loading = False  # checkpoints omit the frozen backbone
        self.val_metrics = self._metrics("val")
        self.test_metrics = self._metrics("test")
        # The run's record (plain values: checkpoints load with torch.load(weights_only=True)),
        # with the parameter counts so TensorBoard's hparams view shows them.
        record = RunRecord(backbone, adapter, task_info, init_adapter_from, self.parameter_counts())
        self.save_hyperparameters(record.to_hparams())

    def _init_from(self, directory: str) -> None:
        try:
            load_adapter(self.model, directory, load_head=True)
            self.head_loaded = True
        except SsmloraError as err:  # e.g. an MNLI head (3 labels) for a 2-label task
            rank_zero_warn(f"Loading {directory} without its head: {err}")
            load_adapter(self.model, directory, load_head=False)
            self.head_loaded = False

    def _metrics(self, stage: str) -> torch.nn.ModuleList:
        return torch.nn.ModuleList(
            self.objective.metrics(self._prefix(stage, i))
            for i in range(len(self.task_info.eval_splits))
        )

    def _prefix(self, stage: str, dataloader_idx: int) -> str:
        """``val``, or ``val_matched``/``val_mismatched`` for several evaluation splits."""
        return self.task_info.eval_splits[dataloader_idx].replace("validation", stage)

    def setup(self, stage: str) -> None:
        precision = str(self.trainer.precision)
        if stage == "fit" and precision in ("bf16-true", "16-true"):
            raise SsmloraError(
                f"trainer.precision={precision} would store the adapter weights in half precision, "
                "where AdamW's small updates round to zero. Use bf16-mixed (or 16-mixed): the "
                "frozen backbone's matmuls still run in half precision, the adapter stays fp32."
            )
        datamodule = getattr(self.trainer, "datamodule", None)
        self.objective.attach(getattr(datamodule, "tokenizer", None))

    def parameter_counts(self) -> dict[str, int]:
        return {
            "params/trainable": count_trainable_parameters(self.model),
            "params/adapter": count_trainable_parameters(self.model, include_head=False),
            "params/total": count_parameters(self.model),
        }

    def configure_callbacks(self) -> list[L.Callback]:
        """The adapter method's own callbacks (its ``callbacks`` hook: training phases, per-step
        hooks), in every fit/validate/test/predict run of this model."""
        method = get_method(self.adapter_config.adapter_type)
        return method.callbacks(self.adapter_config) if method.callbacks is not None else []

    # The steps: the objective's.
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.objective.training_loss(self.model, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.size)
        return loss

    def _evaluate(self, batch, dataloader_idx: int, stage: str, metrics) -> None:
        collection = metrics[dataloader_idx]
        loss = self.objective.evaluate(self.model, batch, collection)
        prefix = self._prefix(stage, dataloader_idx)
        self.log(
            f"{prefix}/loss", loss, add_dataloader_idx=False, batch_size=batch.size, sync_dist=True
        )
        self.log_dict(collection, add_dataloader_idx=False, batch_size=batch.size, prog_bar=True)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, dataloader_idx, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, dataloader_idx, "test", self.test_metrics)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        """One prediction per example (see the objective's ``predict``)."""
        return self.objective.predict(self.model, batch)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(param_groups(self.model))
        if self.scheduler_factory is None:
            return optimizer
        # The steps left: all of them, or fewer when rebuilt mid-run (a training phase's end).
        total_steps = int(self.trainer.estimated_stepping_batches) - self.trainer.global_step
        scheduler = self.scheduler_factory(optimizer, total_steps)
        if isinstance(scheduler, ReduceLROnPlateau):
            config = {"scheduler": scheduler, "interval": "epoch", "monitor": scheduler.monitor}
        else:
            config = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": config}

    # Checkpoints: the adapter and the head only.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"model.{k}" for k in adapter_state_dict(self.model)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        # The YAML config is the source of truth on resume: LightningCLI would otherwise parse
        # these (plain-dict) hyperparameters as init arguments. Kept under our own key.
        checkpoint["ssmlora_hparams"] = checkpoint.pop("hyper_parameters", {})
        # Dropout draws from the global RNG: restore it on resume for an identical continuation.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved_state = checkpoint["state_dict"]
        expected = {f"model.{k}": v for k, v in adapter_state_dict(self.model).items()}
        missing = sorted(expected.keys() - saved_state.keys())
        extra = sorted(saved_state.keys() - expected.keys())
        reshaped = shape_mismatches(self, saved_state, expected)
        if missing or extra or reshaped:
            example = (missing or extra or reshaped)[0]
            raise SsmloraError(
                f"The checkpoint does not fit this model's adapter ({len(missing)} tensors missing, "
                f"{len(extra)} unexpected, {len(reshaped)} of another shape; e.g. {example}): it "
                "was saved with another adapter configuration. Resume with the run's own "
                "config.yaml (next to its logs)."
            )
        saved = (checkpoint.get("ssmlora_hparams", {}).get("task_info") or {}).get("label_names")
        current = self.task_info.label_names
        if saved and current and list(saved) != list(current):
            raise SsmloraError(
                f"The checkpoint was trained with the classes {list(saved)} (in id order) but "
                f"the data now gives {list(current)}: its predictions would be mislabelled. Use "
                "the training data, or list the classes in the task's labels in that order."
            )
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
