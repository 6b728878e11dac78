"""One LightningDataModule for every task: load, encode once (datasets cache), pad per batch, all
through the task's objective (one path for every objective)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Literal

import datasets
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from ssmlora_app.data.samplers import EpochShuffleSampler, ResumableDataLoader, ShardSampler
from ssmlora_app.errors import SsmloraError
from ssmlora_app.objectives import Objective, resolve_objective
from ssmlora_app.tasks import Task, TaskInfo, get_task
from ssmlora_app.tasks.base import GROUP_COLUMN, INDEX_COLUMN
from ssmlora_app.tokenization import check_tokenizer, id_space, load_tokenizer

TEXT_COLUMNS = ("text_a", "text_b", "document", "prompt", "target", "question", "context")
"""Text columns of a classification (``text_a``/``text_b``), causal-LM, extractive-QA or
multiple-choice (``question``/``context``) split."""

TOKENIZER_SAMPLE = 32
"""Training examples whose text :func:`check_tokenizer` reads."""


def _plain(options: dict | None) -> dict | None:
    """``options`` as JSON values (tuples become lists), as checkpoints and YAML files keep them."""
    return None if options is None else json.loads(json.dumps(options))


class TaskDataModule(L.LightningDataModule):
    """Serves one task: ``train`` for fit, the task's evaluation splits for validate/test/predict.

    GLUE test labels are hidden, so ``test`` evaluates the evaluation (dev) splits, as the GLUE
    papers report them. Tasks with a held-out test split (``Task.test_split``: long-context, state
    tracking, byte LM) evaluate it under ``test`` and select checkpoints on ``validation``.
    ``predict_splits: test`` makes ``predict`` run on the test splits instead: GLUE's unlabelled
    ones (a benchmark submission, see :mod:`ssmlora_app.callbacks.predictions`) or the held-out
    ones.
    """

    def __init__(
        self,
        task: Task | str = "quickstart",
        data_dir: str | None = None,
        tokenizer: str | None = None,
        tokenizer_gguf_file: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        sample_seed: int = 42,
        shuffle_seed: int = 0,
        objective: str | None = None,
        truncation: Literal["middle", "tail", "head"] = "middle",
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        min_new_tokens: int = 0,
        predict_splits: Literal["eval", "test"] = "eval",
        task_args: dict | None = None,
    ):
        """
        Args:
            task: The task: a built-in name for its defaults (GLUE: cola, sst2, mrpc, qqp, stsb,
                mnli, qnli, rte, wnli; SuperGLUE: boolq, cb, copa, multirc, superglue_rte, wic,
                wsc; extractive QA: squad, squad_v2; multiple choice: race; long-context: quality, qmsum, narrativeqa; state tracking: dfa, parity,
                word_problem, word_problem_csv; byte_lm; quickstart; custom), or a task class
                with its fields, e.g. ``{class_path: ssmlora_app.tasks.DFATask, init_args:
                {n_states: 8}}`` (on the command line ``--data.task=DFATask
                --data.task.n_states=8``; ``--data.task.help DFATask`` lists the fields).
            data_dir: Local folder with the task's files (GLUE: the original TSV layout, either the
                task folder or the GLUE root); null loads the task from the hub.
            tokenizer: Tokenizer hub id or folder; linked from ``model.backbone`` by the CLI.
                Null uses the task's own tokenizer (synthetic tasks only).
            tokenizer_gguf_file: Read the tokenizer from this GGUF file inside ``tokenizer``;
                linked from ``model.backbone.gguf_file`` by the CLI.
            max_length: Truncate inputs to this many tokens; batches are padded to their longest.
            batch_size: Training batch size (per device).
            eval_batch_size: Evaluation batch size; default ``batch_size``.
            num_workers: DataLoader worker processes.
            max_train_samples: Use a random subset of this many training examples (quick runs).
            max_eval_samples: Use a random subset of this many examples of each evaluation split.
            sample_seed: Seed of those subsets.
            shuffle_seed: Seed of the training order (a permutation per epoch).
            objective: ``classification``, ``causal_lm``, ``extractive_qa`` (SQuAD) or
                ``multiple_choice`` (RACE, COPA on an encoder); null: the task's default.
                Causal LM learns the target tokens after the prompt (see
                :mod:`ssmlora_app.objectives.lm_data`).
            truncation: Causal LM: how a too-long document is shortened, the same for every
                method: ``middle`` (keep its beginning and end), ``tail`` (keep its end) or
                ``head``. The question and the answer options are never cut.
            max_new_tokens: Causal LM: tokens generated per answer, under ``generate`` by
                evaluation (and room kept for the training target) and under ``teacher_forced``
                by ``ssmlora predict`` (within ``max_length``; 0: as many as the reference
                has); null: the task's default.
            num_beams: Causal LM: beams of the generated answers (1: greedy; the PEFT-of-SSMs
                benchmark decodes DART, SAMSum and Spider with 5), KV cache, each beam with its
                own adapter state; the best beam (length-normalised log-likelihood) is the answer.
            min_new_tokens: Causal LM: tokens generated before EOS may end an answer (HF
                ``min_new_tokens``: the answer alone, not the prompt).
            predict_splits: What ``ssmlora predict`` runs on: ``eval``, the evaluation (dev)
                splits; or ``test``, the test splits: GLUE's unlabelled ones (``test.tsv``; MNLI
                ``test_matched.tsv``, ``test_mismatched.tsv`` and the diagnostic AX when found),
                written as the GLUE server's submission files, or the held-out test split of a
                task that has one (long-context, state tracking, byte LM, custom with a test file).
            task_args: Removed: the task's settings are the fields of its class (see ``task``).
                Only null is accepted (the config.yaml of older runs has it).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["task", "task_args"])
        self.task = get_task(task) if isinstance(task, str) else task
        if task_args:
            kind = type(self.task)
            raise SsmloraError(
                "data.task_args was replaced by the task class's own typed fields: write "
                f"data.task: {{class_path: {kind.__module__}.{kind.__qualname__}, init_args: "
                f"{task_args}}}, or on the command line --data.task={kind.__qualname__} "
                "--data.task.<field>=<value> (see docs/tasks.md)."
            )
        self.task.check_data_dir(data_dir)
        if max_length <= 0 or batch_size <= 0:
            raise SsmloraError("data.max_length and data.batch_size must be positive.")
        if eval_batch_size is not None and eval_batch_size <= 0:
            raise SsmloraError(f"data.eval_batch_size must be positive, got {eval_batch_size}.")
        if num_workers < 0:
            raise SsmloraError(
                f"data.num_workers must be 0 (load in the main process) or more, got {num_workers}."
            )
        if predict_splits == "test" and not (self.task.submission or self.task.test_split):
            raise SsmloraError(
                f"data.predict_splits=test: task {self.task.name!r} has no test split that "
                "predict can serve (GLUE tasks and tasks with a held-out test split have one; a "
                "custom task needs its test_file or test_split_name). Use data.predict_splits: "
                "eval to predict the evaluation splits."
            )
        objective_cls = resolve_objective(objective, self.task)
        if num_beams < 1 or min_new_tokens < 0:
            raise SsmloraError("data.num_beams must be at least 1 and data.min_new_tokens >= 0.")
        if (num_beams, min_new_tokens) != (1, 0) and not objective_cls.generates:
            raise SsmloraError(
                f"data.num_beams / data.min_new_tokens set decoding, but the {objective_cls.name} "
                f"objective of task {self.task.name!r} generates no text; leave them at 1 / 0."
            )
        # A tokenizer from outside the task is checked against a sample of the training text
        # (see check_tokenizer) when that split is prepared; the task's own ones need no check.
        self._check_tokenizer = tokenizer is not None
        self.tokenizer = self._tokenizer(tokenizer, tokenizer_gguf_file)
        objective_cls.prepare_tokenizer(self.tokenizer)
        self.task_info = TaskInfo(
            task=self.task.name,
            num_labels=self.task.num_labels,
            problem_type="regression" if self.task.is_regression else "single_label_classification",
            metrics=tuple(objective_cls.task_metrics(self.task)),
            eval_splits=tuple(self.task.eval_splits),
            vocab_size=id_space(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            objective=objective_cls.name,
            max_new_tokens=objective_cls.answer_tokens(self.task, max_new_tokens),
            label_names=self.task.label_names if objective_cls.family == "classification" else None,
            max_length=max_length,
            truncation=truncation,
            grouped=self.task.grouped,
            num_beams=num_beams,
            min_new_tokens=min_new_tokens,
            metric_options=_plain(self.task.metric_options(data_dir)),
        )
        self.objective: Objective = objective_cls(self.task_info)
        self.objective.attach(self.tokenizer)
        self.collator = self.objective.collator(self.tokenizer, "train")
        self.eval_collator = self.objective.collator(self.tokenizer, "eval")
        self.predict_collator = self.objective.collator(self.tokenizer, "predict")
        self.splits: dict[str, datasets.Dataset] = {}
        self._predict_splits: list[str] | None = None

    def _tokenizer(self, source: str | None, gguf_file: str | None):
        if source is not None:
            tokenizer = load_tokenizer(source, gguf_file=gguf_file)
        else:
            tokenizer = self.task.builtin_tokenizer()
            if tokenizer is None:
                raise SsmloraError(
                    f"Task {self.task.name!r} needs a tokenizer: set model.backbone.name_or_path "
                    "or model.backbone.tokenizer to a hub id or a local folder."
                )
        # Classification pools the first token (encoders) or the last non-pad one (decoders),
        # and sequence adapters must not read pads before real tokens: pad on the right.
        tokenizer.padding_side = "right"
        return tokenizer

    def eval_split_names(self, stage: str) -> list[str]:
        """The splits evaluated in ``stage``: the task's evaluation splits, or for ``test`` their
        held-out ``test`` counterparts when the task has them (``test_split``; GLUE has not)."""
        splits = list(self.task.eval_splits)
        if stage == "test" and self.task.test_split:
            return [s.replace("validation", "test") for s in splits]
        return splits

    def predict_split_names(self) -> list[str]:
        """The splits ``predict`` runs on, one dataloader each: the evaluation splits, or under
        ``predict_splits: test`` the task's unlabelled test splits (``submission_splits``: their
        files are checked here, naming any that is missing) or its held-out ones."""
        if self.hparams.predict_splits == "eval":
            return self.eval_split_names("predict")
        if self._predict_splits is None:  # decided once: the writer names the same splits
            if self.task.submission:
                self._predict_splits = list(self.task.submission_splits(self.hparams.data_dir))
            else:
                self._predict_splits = self.eval_split_names("test")
        return list(self._predict_splits)

    def setup(self, stage: str) -> None:
        needed = self.predict_split_names() if stage == "predict" else self.eval_split_names(stage)
        if stage == "fit":
            needed.insert(0, "train")
        for split in needed:
            if split not in self.splits:
                self.splits[split] = self._prepare(split)

    def _prepare(self, split: str) -> datasets.Dataset:
        hp = self.hparams
        name = self.task.name
        ds = self.objective.load_split(self.task, split, hp.data_dir)
        limit = hp.max_train_samples if split == "train" else hp.max_eval_samples
        if limit is not None and limit < len(ds):
            if INDEX_COLUMN in ds.column_names and limit > 0:
                rank_zero_warn(
                    f"data.max_eval_samples={limit}: the {name} {split} predictions cover "
                    f"{limit} of its {len(ds)} examples; a benchmark submission needs them all "
                    "(leave data.max_eval_samples unset)."
                )
            ds = ds.shuffle(seed=hp.sample_seed).select(range(limit))
        if len(ds) == 0:
            which = "train" if split == "train" else "eval"
            detail = f" (max_{which}_samples={limit})" if limit == 0 else ""
            raise SsmloraError(
                f"The {name} {split} split is empty{detail}: check the data files and "
                "data.max_train_samples / data.max_eval_samples."
            )
        if self.task_info.grouped and GROUP_COLUMN not in ds.column_names:
            raise SsmloraError(
                f"Task {name!r} is grouped but its {split} split has no {GROUP_COLUMN!r} column "
                "(see ssmlora_app.tasks.base.GROUP_COLUMN)."
            )
        if split == "train" and self._check_tokenizer:
            columns = [c for c in TEXT_COLUMNS if c in ds.column_names]
            sample = ds.select(range(min(TOKENIZER_SAMPLE, len(ds))))
            texts = [row[c] for row in sample for c in columns if isinstance(row[c], str)]
            check_tokenizer(self.tokenizer, texts, f"the first {len(sample)} {split} examples")
        return self.objective.encode(ds, self.tokenizer, self.task, f"{name} {split}")

    def majority_baseline(self) -> float | None:
        """Accuracy of always predicting the most frequent class of the first evaluation split
        (None where the objective has no classes to count)."""
        split = self.task.eval_splits[0]
        ds = self.splits.get(split) or self._prepare(split)
        labels = self.objective.gold_labels(ds)
        if not labels:
            return None
        return Counter(labels).most_common(1)[0][1] / len(labels)

    def _loader(self, split: str, shuffle: bool, collate_fn) -> DataLoader:
        hp = self.hparams
        trainer = self.trainer  # None outside a Trainer (tests, notebooks)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        size = len(self.splits[split])
        batch_size = hp.batch_size if shuffle else (hp.eval_batch_size or hp.batch_size)
        if shuffle:
            sampler = EpochShuffleSampler(
                size, hp.shuffle_seed, batch_size, rank, world, self._batches_done
            )
        else:
            sampler = ShardSampler(size, rank, world)
        return ResumableDataLoader(
            self.splits[split],
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            # Its own generator: creating an iterator then draws no number from the global RNG,
            # whose state a resumed run restores (see AdapterModule.on_load_checkpoint).
            generator=torch.Generator().manual_seed(hp.shuffle_seed),
        )

    def _batches_done(self) -> int:
        """Batches of the current epoch already trained: 0 at an epoch's start, k when a run
        resumes from a checkpoint written after k batches of the epoch."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, collate_fn=self.collator)

    def _eval_loaders(self, stage: str = "validate") -> list[DataLoader]:
        return [
            self._loader(s, shuffle=False, collate_fn=self.eval_collator)
            for s in self.eval_split_names(stage)
        ]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        """The splits of :meth:`predict_split_names`, in the objective's prediction batches (an
        unlabelled split's batches carry no labels)."""
        return [
            self._loader(split, shuffle=False, collate_fn=self.predict_collator)
            for split in self.predict_split_names()
        ]
