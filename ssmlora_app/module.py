"""The LightningModule: frozen backbone + adapter + task head, metrics and optimizer groups."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ssmlora_app.adapters import (
    AdapterConfig,
    LoRAConfig,
    adapter_state_dict,
    count_parameters,
    count_trainable_parameters,
    hrm_generation,
    inject_adapters,
    load_adapter,
    read_adapter_config,
)
from ssmlora_app.backbone import (
    GENERATION_TOKENS,
    BackboneConfig,
    build_causal_lm,
    build_classifier,
)
from ssmlora_app.errors import SsmloraError
from ssmlora_app.optim import LinearWarmupDecay, param_groups
from ssmlora_app.tasks import TaskInfo
from ssmlora_app.tasks.base import GROUP_COLUMN
from ssmlora_app.tasks.metrics import build_metrics, teacher_forced_stats

ROTARY_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "gemma", "phi3")
"""Backbones with rotary positions: ``max_position_embeddings`` is a trained length, not a hard
limit, so longer inputs are allowed (long-context fine-tuning)."""

OptimizerFactory = Callable[[Iterable], Optimizer]
SchedulerFactory = Callable[[Optimizer, int], LRScheduler | ReduceLROnPlateau]


class AdapterModule(L.LightningModule):
    """Fine-tunes a frozen backbone through an adapter for one task: classification/regression
    with a sequence-classification head, or causal LM (``task_info.objective``) with the model's
    own LM head, the loss on the target tokens only, and evaluation by option log-likelihood,
    greedy generation or teacher forcing (``task_info.lm_eval``).

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
            task_info: Labels, metrics and tokenizer facts; linked from the data module by the CLI.
        """
        super().__init__()
        if task_info is None:
            raise SsmloraError("AdapterModule needs task_info (the CLI links it from data).")
        if adapter is None:  # a saved adapter brings its own config (e.g. a reduced HRM one)
            adapter = read_adapter_config(init_adapter_from) if init_adapter_from else LoRAConfig()
        self.backbone_config = backbone
        self.task_info = task_info
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        if self.is_causal_lm:
            self.model = build_causal_lm(
                backbone,
                task_info.vocab_size,
                task_info.pad_token_id,
                special_tokens={name: getattr(task_info, name) for name in GENERATION_TOKENS},
            )
        else:
            self.model = build_classifier(
                backbone,
                num_labels=task_info.num_labels,
                problem_type=task_info.problem_type,
                vocab_size=task_info.vocab_size,
                pad_token_id=task_info.pad_token_id,
            )
        self._check_positions()
        # from_pretrained returns the model in eval mode and Lightning keeps submodules' modes:
        # without this the frozen backbone would fine-tune with its dropout off. Trained in
        # train mode as peft and HF Trainer do (model.backbone.dropout: false turns it off).
        self.model.train()
        inject_adapters(self.model, adapter)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if init_adapter_from is not None:
            self._init_from(init_adapter_from)
        self.strict_loading = False  # checkpoints omit the frozen backbone
        self.val_metrics = self._metrics("val")
        self.test_metrics = self._metrics("test")
        # Plain values only (checkpoints load with torch.load(weights_only=True)), with the
        # parameter counts so TensorBoard's hparams view shows them.
        self.save_hyperparameters(
            {
                "backbone": asdict(backbone),
                "adapter": {"adapter_type": adapter.adapter_type, **asdict(adapter)},
                "init_adapter_from": init_adapter_from,
                "task_info": asdict(task_info),
                **self.parameter_counts(),
            }
        )

    def _check_positions(self) -> None:
        """Refuse, before training, inputs longer than the backbone's position embeddings.

        ``data.max_length`` bounds every sequence the model sees, generated tokens included: under
        ``generate`` the data keeps ``max_new_tokens`` of it for the answer (the document is cut so
        the prompt fits in ``max_length - max_new_tokens``, see
        :func:`~ssmlora_app.tasks.lm.encode_lm_example`), and :meth:`generate_ids` stops every
        continuation at ``max_length`` with its prompt (``predict`` under ``teacher_forced``).
        """
        config, info = self.model.config, self.task_info
        positions = getattr(config, "max_position_embeddings", None)
        if not isinstance(positions, int) or info.max_length is None:
            return  # no learned positions (Mamba, rotary models report a limit they can exceed)
        if config.model_type in ("roberta", "xlm-roberta", "camembert"):
            positions -= (
                config.pad_token_id or 0
            ) + 1  # RoBERTa's positions start after the pad id
        if info.max_length > positions and config.model_type not in ROTARY_MODEL_TYPES:
            generated = (
                f", the data.max_new_tokens={info.max_new_tokens} generated tokens included"
                if self.is_causal_lm and info.lm_eval == "generate"
                else ""
            )
            raise SsmloraError(
                f"data.max_length={info.max_length} exceeds the {positions} positions of the "
                f"{config.model_type} backbone: lower data.max_length (inputs are truncated to "
                f"it{generated}) or use a longer-context backbone."
            )

    @property
    def is_causal_lm(self) -> bool:
        return self.task_info.objective == "causal_lm"

    def _init_from(self, directory: str) -> None:
        try:
            load_adapter(self.model, directory, load_head=True)
        except SsmloraError as err:  # e.g. an MNLI head (3 labels) for a 2-label task
            rank_zero_warn(f"Loading {directory} without its head: {err}")
            load_adapter(self.model, directory, load_head=False)

    def _metrics(self, stage: str) -> torch.nn.ModuleList:
        info = self.task_info
        return torch.nn.ModuleList(
            build_metrics(info.metrics, info.num_labels, self._prefix(stage, i), info.grouped)
            for i in range(len(info.eval_splits))
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

    def parameter_counts(self) -> dict[str, int]:
        return {
            "params/trainable": count_trainable_parameters(self.model),
            "params/adapter": count_trainable_parameters(self.model, include_head=False),
            "params/total": count_parameters(self.model),
        }

    @staticmethod
    def _model_inputs(batch: dict) -> dict:
        """The batch without what only the metrics read (a grouped task's group ids)."""
        return {k: v for k, v in batch.items() if k != GROUP_COLUMN}

    @staticmethod
    def _groups(batch: dict) -> dict:
        """``groups=`` for the grouped metrics (a collection passes it only to the metrics whose
        ``update`` takes it); empty for an ungrouped task."""
        return {"groups": batch[GROUP_COLUMN]} if GROUP_COLUMN in batch else {}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**self._model_inputs(batch)).logits

    def _predictions(self, logits: torch.Tensor) -> torch.Tensor:
        if self.task_info.problem_type == "regression":
            return logits.squeeze(-1).float()
        return logits.argmax(-1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(**self._model_inputs(batch)).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _evaluate(self, batch: dict, dataloader_idx: int, stage: str, metrics) -> None:
        if self.is_causal_lm:
            self._evaluate_lm(batch, dataloader_idx, stage, metrics)
            return
        out = self.model(**self._model_inputs(batch))
        prefix = self._prefix(stage, dataloader_idx)
        size = batch["input_ids"].shape[0]
        self.log(
            f"{prefix}/loss", out.loss, add_dataloader_idx=False, batch_size=size, sync_dist=True
        )
        collection = metrics[dataloader_idx]
        collection.update(self._predictions(out.logits), batch["labels"], **self._groups(batch))
        self.log_dict(collection, add_dataloader_idx=False, batch_size=size, prog_bar=True)

    # Causal LM: the batch layout is CausalLMCollator's.
    @staticmethod
    def _lm_inputs(batch: dict, prefix: str = "") -> dict:
        return {
            "input_ids": batch[f"{prefix}input_ids"],
            "attention_mask": batch[f"{prefix}attention_mask"],
        }

    def _evaluate_lm(self, batch: dict, dataloader_idx: int, stage: str, metrics) -> None:
        prefix = self._prefix(stage, dataloader_idx)
        size = batch["input_ids"].shape[0]
        logits = self.model(**self._lm_inputs(batch)).logits
        nll, correct, tokens = teacher_forced_stats(logits, batch["labels"])
        loss = nll.sum() / tokens.sum().clamp(min=1)
        self.log(f"{prefix}/loss", loss, add_dataloader_idx=False, batch_size=size)
        collection = metrics[dataloader_idx]
        mode = self.task_info.lm_eval
        if mode == "teacher_forced":
            collection.update(nll, correct, tokens)
        elif mode == "choice":
            collection.update(self.choose(batch), batch["choice_label"], **self._groups(batch))
        else:
            collection.update(self.generate_text(batch), batch["references"])
        self.log_dict(collection, add_dataloader_idx=False, batch_size=size, prog_bar=True)

    def choose(self, batch: dict) -> torch.Tensor:
        """Index of the option with the highest summed log-likelihood, (B,)."""
        logits = self.model(**self._lm_inputs(batch, "choice_")).logits
        nll, _, _ = teacher_forced_stats(logits, batch["choice_labels"])
        scores = torch.split(-nll, batch["num_choices"].tolist())
        return torch.stack([s.argmax() for s in scores])

    def generate_ids(
        self, batch: dict, max_new_tokens: list[int] | None = None
    ) -> list[torch.Tensor]:
        """Greedy continuations (KV cache) of each prompt (``prompt_ids`` (B, P) up to
        ``prompt_lengths`` (B,)), one prompt at a time: no padding reaches the model, so sequence
        adapters (HRM) read only real tokens. Each continuation (1-D) stops at EOS (the
        tokenizer's, see :func:`~ssmlora_app.backbone.build_causal_lm`), after ``max_new_tokens``
        (one per prompt; default ``task_info.max_new_tokens`` for all), or where it would make the
        sequence longer than ``data.max_length``, the longest checked against the backbone's
        positions (a ``generate`` task's prompts leave ``max_new_tokens`` of room)."""
        info = self.task_info
        lengths = batch["prompt_lengths"].tolist()
        if max_new_tokens is None:
            max_new_tokens = [info.max_new_tokens] * len(lengths)
        if info.max_length is not None:
            max_new_tokens = [
                min(new, info.max_length - length)
                for new, length in zip(max_new_tokens, lengths, strict=True)
            ]
        outputs = []
        for row, length, new in zip(batch["prompt_ids"], lengths, max_new_tokens, strict=True):
            if new <= 0:
                outputs.append(row.new_empty(0))
                continue
            prompt = row[:length].unsqueeze(0)
            with hrm_generation(self.model):
                out = self.model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=new,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=info.pad_token_id,
                )
            outputs.append(out[0, length:])
        return outputs

    def generate_text(self, batch: dict, max_new_tokens: list[int] | None = None) -> list[str]:
        """:meth:`generate_ids`, decoded without special tokens: one string per prompt."""
        tokenizer = self.trainer.datamodule.tokenizer
        return [
            tokenizer.decode(ids, skip_special_tokens=True)
            for ids in self.generate_ids(batch, max_new_tokens)
        ]

    def predict_new_tokens(self, batch: dict) -> list[int] | None:
        """Tokens generated per example by ``predict``: under ``generate``, ``max_new_tokens`` (the
        data kept that room); under ``teacher_forced``, ``max_new_tokens`` or, when 0, the
        reference's length (``target_lengths``); either way :meth:`generate_ids` stops within
        ``data.max_length`` with the prompt, the longest sequence the model was checked for."""
        if self.task_info.lm_eval == "generate":
            return None
        if self.task_info.max_new_tokens > 0:
            return [self.task_info.max_new_tokens] * len(batch["prompt_lengths"])
        return batch["target_lengths"].tolist()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, dataloader_idx, "val", self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, dataloader_idx, "test", self.test_metrics)

    def predict_step(
        self, batch: dict, batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor | list[str]:
        """Classification: class ids, or scores for regression (B,). Causal LM: the chosen
        option's index (B,) under ``choice``, else each example's greedy answer as text."""
        if self.is_causal_lm:
            if self.task_info.lm_eval == "choice":
                return self.choose(batch)
            return self.generate_text(batch, self.predict_new_tokens(batch))
        batch = {k: v for k, v in self._model_inputs(batch).items() if k != "labels"}
        return self._predictions(self.model(**batch).logits)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(param_groups(self.model))
        if self.scheduler_factory is None:
            return optimizer
        # The steps left: all of them, or fewer when rebuilt mid-run (SDT after its warm-up).
        total_steps = int(self.trainer.estimated_stepping_batches) - self.trainer.global_step
        scheduler = self.scheduler_factory(optimizer, total_steps)
        if isinstance(scheduler, ReduceLROnPlateau):
            config = {"scheduler": scheduler, "interval": "epoch", "monitor": scheduler.monitor}
        else:
            config = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": config}

    # Checkpoints: the adapter and the head only.
    def _adapter_keys(self) -> set[str]:
        return {f"model.{k}" for k in adapter_state_dict(self.model)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._adapter_keys()
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
        reshaped = [
            k
            for k in expected.keys() & saved_state.keys()
            if expected[k].shape != saved_state[k].shape
        ]
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
                "the training data, or list the classes in data.task_args.labels in that order."
            )
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
