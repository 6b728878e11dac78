"""Causal-LM objectives: the model's own LM head (frozen like the backbone), the loss on the
target tokens only (:mod:`ssmlora_app.objectives.lm_data`), and one objective per evaluation:

* :class:`LMChoice`: each answer option scored by its summed log-likelihood, arg-max (accuracy);
* :class:`LMGenerate`: generated answers (greedy or beam search, KV cache), scored by text
  metrics against references;
* :class:`LMTeacherForced`: arg-max and log-likelihood of the target tokens (state tracking, bits
  per byte); ``ssmlora predict`` still writes greedy answers.
"""

from __future__ import annotations

from functools import partial

import datasets
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MetricCollection
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ssmlora_app.adapters import generation_context, lm_training_loss
from ssmlora_app.backbone import BackboneConfig, build_causal_lm
from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives.base import Objective, Stage, register_objective
from ssmlora_app.objectives.batches import LMBatch, PromptInputs
from ssmlora_app.objectives.lm_data import (
    LMCollator,
    LMFormat,
    encode_lm_example,
    generation_prompt,
)
from ssmlora_app.tasks.base import GROUP_COLUMN, INDEX_COLUMN, LM_COLUMNS, Task
from ssmlora_app.tasks.metrics import teacher_forced_stats


class CausalLM(Objective):
    """What the three causal-LM objectives share: the model, the encoding, the loss and
    generation. ``data.max_length`` bounds every sequence the model sees, generated tokens
    included: :meth:`generate_ids` stops every continuation there."""

    family = "causal_lm"

    @classmethod
    def task_metrics(cls, task: Task) -> tuple[str, ...]:
        return task.lm_metrics

    @classmethod
    def prepare_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.pad_token_id is None:  # Llama/Mistral tokenizers have none
            tokenizer.pad_token = tokenizer.eos_token

    def build_model(
        self, backbone: BackboneConfig, load_kwargs: dict | None = None
    ) -> PreTrainedModel:
        info = self.info
        return build_causal_lm(
            backbone,
            info.vocab_size,
            info.pad_token_id,
            special_tokens={"bos_token_id": info.bos_token_id, "eos_token_id": info.eos_token_id},
            load_kwargs=load_kwargs,
        )

    # Data.
    def answer_room(self) -> int | None:
        """Tokens kept for a generated answer (see :class:`LMFormat`)."""
        return None

    def load_split(self, task: Task, split: str, data_dir: str | None) -> datasets.Dataset:
        return task.load_lm_split(split, data_dir)

    def encode(
        self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, task: Task, desc: str
    ) -> datasets.Dataset:
        ds = task.render_lm(ds, tokenizer)  # tokenizer-dependent formatting (chat templates)
        missing = [c for c in LM_COLUMNS if c not in ds.column_names]
        if missing:
            raise SsmloraError(
                f"{desc} lacks the causal-LM columns {missing} (see "
                "ssmlora_app.tasks.base.LM_COLUMNS)."
            )
        fmt = LMFormat(self.info.max_length, self.info.truncation, self.answer_room())
        keep = ("label", "references", GROUP_COLUMN, INDEX_COLUMN)
        ds = ds.map(
            partial(encode_lm_example, tokenizer=tokenizer, fmt=fmt),
            remove_columns=[c for c in ds.column_names if c not in keep],
            desc=f"Tokenising {desc}",
        )
        lengths = ds["target_tokens"]
        room = fmt.answer_room
        cut = [n for n in lengths if room is not None and n > room]
        if cut:  # said once per split, with the numbers
            rank_zero_warn(
                f"{desc}: {len(cut)} of {len(lengths)} targets are longer than "
                f"data.max_new_tokens={room} (up to {max(cut)} tokens, end of text included): "
                f"training sees their first {room} tokens, generation stops at {room}, and the "
                "metrics compare with the whole reference. Raise data.max_new_tokens to cover them."
            )
        return ds.remove_columns("target_tokens")

    # Steps.
    def training_loss(self, model: nn.Module, batch: LMBatch) -> Tensor:
        """The loss on the target tokens (one forward, or the adapter method's own way, e.g.
        HRM's chunked truncated BPTT: see :func:`~ssmlora_app.adapters.lm_training_loss`)."""
        return lm_training_loss(model, batch.input_ids, batch.attention_mask, batch.labels)

    def target_stats(self, model: nn.Module, batch: LMBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Per example: summed NLL of the target tokens, correct arg-max count, target count."""
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return teacher_forced_stats(logits, batch.labels)

    def generate_ids(
        self, model: nn.Module, prompts: PromptInputs, max_new_tokens: list[int] | None = None
    ) -> list[Tensor]:
        """Continuations (KV cache) of each prompt (``ids`` (B, P) up to ``lengths`` (B,)), one
        prompt at a time: no padding reaches the model, so sequence adapters read only real
        tokens; the adapter method's ``generation`` context carries any state across decode
        steps (and reorders it with the beams). Greedy, or beam search with ``num_beams`` beams
        (``TaskInfo.num_beams``; HF ``generate``'s: the finished hypothesis with the best
        length-normalised log-likelihood, length penalty 1, no early stop) — the PEFT-of-SSMs
        benchmark's decoding. Each continuation (1-D) has at least ``TaskInfo.min_new_tokens``
        tokens and stops at EOS (the tokenizer's, see
        :func:`~ssmlora_app.backbone.build_causal_lm`), after ``max_new_tokens`` (one per prompt;
        default ``TaskInfo.max_new_tokens`` for all), or where the sequence would pass
        ``data.max_length``, the longest checked against the backbone's positions."""
        info = self.info
        lengths = prompts.lengths.tolist()
        if max_new_tokens is None:
            max_new_tokens = [info.max_new_tokens] * len(lengths)
        if info.max_length is not None:
            max_new_tokens = [
                min(new, info.max_length - length)
                for new, length in zip(max_new_tokens, lengths, strict=True)
            ]
        outputs = []
        for row, length, new in zip(prompts.ids, lengths, max_new_tokens, strict=True):
            if new <= 0:
                outputs.append(row.new_empty(0))
                continue
            prompt = row[:length].unsqueeze(0)
            with generation_context(model):
                out = model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=new,
                    min_new_tokens=min(info.min_new_tokens, new),
                    num_beams=info.num_beams,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=info.pad_token_id,
                )
            outputs.append(out[0, length:])
        return outputs

    def generate_text(
        self, model: nn.Module, prompts: PromptInputs, max_new_tokens: list[int] | None = None
    ) -> list[str]:
        """:meth:`generate_ids`, decoded without special tokens: one string per prompt."""
        if self.tokenizer is None:
            raise SsmloraError("Generating text needs the data's tokenizer (Objective.attach).")
        return [
            self.tokenizer.decode(ids, skip_special_tokens=True)
            for ids in self.generate_ids(model, prompts, max_new_tokens)
        ]

    def _loss(self, stats: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        nll, _, tokens = stats
        return nll.sum() / tokens.sum().clamp(min=1)

    # Records of generated answers (generate and teacher-forced).
    def text_records(
        self, values: list, order: list[int], dataset: datasets.Dataset | None
    ) -> list[dict]:
        """The answer as text and the reference: ``label`` is the first of the example's
        references, ``references`` all of them when there are several; without references, the
        target tokens after the generation prompt, decoded."""
        rows = sorted(zip(order, values, strict=True), key=lambda pair: pair[0])
        records = [{"index": i, "prediction": v} for i, v in rows]
        if dataset is None or "references" not in dataset.column_names:
            return records
        references = list(dataset["references"])
        for record in records:
            refs = references[record["index"]]
            if len(refs) > 1:
                record.update(label=refs[0], references=list(refs))
            elif refs:
                record["label"] = refs[0]
            elif self.tokenizer is not None:
                row = dataset[record["index"]]
                target = row["input_ids"][len(generation_prompt(row)) :]
                record["label"] = self.tokenizer.decode(target, skip_special_tokens=True)
        return records


@register_objective
class LMChoice(CausalLM):
    """Multiple choice: the option with the highest summed log-likelihood."""

    name = "lm_choice"
    evaluation = "choice"

    def collator(self, tokenizer: PreTrainedTokenizerBase, stage: Stage) -> LMCollator:
        return LMCollator(tokenizer.pad_token_id, choices=stage != "train")

    def gold_labels(self, ds: datasets.Dataset) -> list | None:
        return list(ds["label"])

    def choose(self, model: nn.Module, batch: LMBatch) -> Tensor:
        """Index of the option with the highest summed log-likelihood, ``(B,)``."""
        choices = batch.choices
        logits = model(input_ids=choices.input_ids, attention_mask=choices.attention_mask).logits
        nll, _, _ = teacher_forced_stats(logits, choices.labels)
        scores = torch.split(-nll, choices.num_choices.tolist())
        return torch.stack([s.argmax() for s in scores])

    def evaluate(self, model: nn.Module, batch: LMBatch, metrics: MetricCollection) -> Tensor:
        groups = {} if batch.groups is None else {"groups": batch.groups}
        metrics.update(self.choose(model, batch), batch.gold, **groups)
        return self._loss(self.target_stats(model, batch))

    def predict(self, model: nn.Module, batch: LMBatch) -> Tensor:
        """The chosen option's index, ``(B,)``."""
        return self.choose(model, batch)

    def records(
        self, values: list, order: list[int], dataset: datasets.Dataset | None
    ) -> list[dict]:
        rows = sorted(zip(order, values, strict=True), key=lambda pair: pair[0])
        records = [{"index": i, "prediction": int(v)} for i, v in rows]
        if dataset is not None and "label" in dataset.column_names:
            gold = list(dataset["label"])
            for record in records:
                record["label"] = int(gold[record["index"]])
        return records


@register_objective
class LMGenerate(CausalLM):
    """Generated answers of ``max_new_tokens`` (greedy or beam search), scored by text metrics
    against the references."""

    name = "lm_generate"
    evaluation = "generate"
    generates = True

    @classmethod
    def answer_tokens(cls, task: Task, requested: int | None) -> int:
        tokens = task.max_new_tokens if requested is None else requested
        if tokens <= 0:
            raise SsmloraError("data.max_new_tokens must be positive for a generation task.")
        return tokens

    def answer_room(self) -> int | None:
        return self.info.max_new_tokens

    def length_note(self) -> str:
        return f", the data.max_new_tokens={self.info.max_new_tokens} generated tokens included"

    def collator(self, tokenizer: PreTrainedTokenizerBase, stage: Stage) -> LMCollator:
        return LMCollator(tokenizer.pad_token_id, prompts=stage != "train", references=True)

    def evaluate(self, model: nn.Module, batch: LMBatch, metrics: MetricCollection) -> Tensor:
        metrics.update(self.generate_text(model, batch.prompts), batch.references)
        return self._loss(self.target_stats(model, batch))

    def predict(self, model: nn.Module, batch: LMBatch) -> list[str]:
        """Each example's generated answer (``max_new_tokens``, the room the data kept)."""
        return self.generate_text(model, batch.prompts)

    def records(
        self, values: list, order: list[int], dataset: datasets.Dataset | None
    ) -> list[dict]:
        return self.text_records(values, order, dataset)


@register_objective
class LMTeacherForced(CausalLM):
    """Token and sequence accuracy (and bits per byte) of the target under teacher forcing."""

    name = "lm_teacher_forced"
    evaluation = "teacher_forced"
    generates = True

    @classmethod
    def answer_tokens(cls, task: Task, requested: int | None) -> int:
        return task.max_new_tokens if requested is None else requested

    def collator(self, tokenizer: PreTrainedTokenizerBase, stage: Stage) -> LMCollator:
        predict = stage == "predict"
        return LMCollator(tokenizer.pad_token_id, prompts=predict, target_lengths=predict)

    def evaluate(self, model: nn.Module, batch: LMBatch, metrics: MetricCollection) -> Tensor:
        stats = self.target_stats(model, batch)
        metrics.update(*stats)
        return self._loss(stats)

    def predict(self, model: nn.Module, batch: LMBatch) -> list[str]:
        """Greedy answers of ``max_new_tokens`` or, when 0, of the reference's length; within
        ``data.max_length`` with the prompt either way."""
        prompts = batch.prompts
        if self.info.max_new_tokens > 0:
            lengths = [self.info.max_new_tokens] * len(prompts.lengths)
        else:
            lengths = prompts.target_lengths.tolist()
        return self.generate_text(model, prompts, lengths)

    def records(
        self, values: list, order: list[int], dataset: datasets.Dataset | None
    ) -> list[dict]:
        return self.text_records(values, order, dataset)
