"""One LightningDataModule for every task: load, tokenise once (datasets cache), pad per batch."""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Literal

import datasets
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import TaskInfo, get_task
from ssmlora_app.tasks.base import GROUP_COLUMN, INDEX_COLUMN, LM_COLUMNS
from ssmlora_app.tasks.lm import TRUNCATION_POLICIES, CausalLMCollator, LMFormat, encode_lm_example
from ssmlora_app.tasks.samplers import EpochShuffleSampler, ResumableDataLoader, ShardSampler
from ssmlora_app.tokenization import check_tokenizer, id_space, load_tokenizer

TEXT_COLUMNS = ("text_a", "text_b", "document", "prompt", "target")
"""Text columns of a classification (``text_a``/``text_b``) or causal-LM split."""

TOKENIZER_SAMPLE = 32
"""Training examples whose text :func:`check_tokenizer` reads."""


def _tokenize(batch: dict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
    pair = batch["text_b"] if any(t is not None for t in batch["text_b"]) else None
    return tokenizer(batch["text_a"], pair, truncation=True, max_length=max_length)


class _WithoutColumns:
    """A collator fed the examples without ``columns`` (a class, so worker processes can pickle
    it): an unlabelled test split's placeholder labels and file indices stay out of the batch."""

    def __init__(self, collator, columns: tuple[str, ...]):
        self.collator, self.columns = collator, columns

    def __call__(self, features: list[dict]) -> dict:
        return self.collator(
            [{k: v for k, v in f.items() if k not in self.columns} for f in features]
        )


class TaskDataModule(L.LightningDataModule):
    """Serves one task: ``train`` for fit, the task's evaluation splits for validate/test/predict.

    GLUE test labels are hidden, so ``test`` evaluates the evaluation (dev) splits, as the GLUE
    papers report them. Tasks with a held-out test split (``test_split``: long-context, state
    tracking, byte LM) evaluate it under ``test`` and select checkpoints on ``validation``.
    ``predict_splits: test`` makes ``predict`` run on the test splits instead: GLUE's unlabelled
    ones (a benchmark submission, see :mod:`ssmlora_app.callbacks.predictions`) or the held-out ones.
    """

    def __init__(
        self,
        task: str = "quickstart",
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
        task_args: dict | None = None,
        objective: str | None = None,
        truncation: str = "middle",
        max_new_tokens: int | None = None,
        predict_splits: Literal["eval", "test"] = "eval",
    ):
        """
        Args:
            task: Task name: GLUE (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli),
                SuperGLUE (boolq, cb, copa, multirc, wic, wsc, superglue_rte), long-context
                (quality, qmsum, narrativeqa), state tracking (dfa, parity, word_problem,
                word_problem_csv), byte_lm, quickstart, or custom (your own files, set in
                ``task_args``: see ``ssmlora_app.tasks.custom.CustomTask``). See the README's task table.
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
            task_args: The task's own settings (e.g. ``{n_states: 4, train_length: 64,
                eval_lengths: [128, 256]}`` for dfa, ``{file: enwik8}`` for byte_lm); see the
                task's class for its fields.
            objective: ``classification`` or ``causal_lm``; null: the task's default. Causal LM
                learns the target tokens after the prompt (see :mod:`ssmlora_app.tasks.lm`).
            truncation: Causal LM: how a too-long document is shortened, the same for every
                method: ``middle`` (keep its beginning and end), ``tail`` (keep its end) or
                ``head``. The question and the answer options are never cut.
            max_new_tokens: Causal LM: tokens generated per answer, under ``generate`` by
                evaluation (and room kept for the training target) and under ``teacher_forced``
                by ``ssmlora predict`` (within ``max_length``; 0: as many as the reference
                has); null: the task's default.
            predict_splits: What ``ssmlora predict`` runs on: ``eval``, the evaluation (dev)
                splits; or ``test``, the test splits: GLUE's unlabelled ones (``test.tsv``; MNLI
                ``test_matched.tsv``, ``test_mismatched.tsv`` and the diagnostic AX when found),
                written as the GLUE server's submission files, or the held-out test split of a
                task that has one (long-context, state tracking, byte LM, custom with a test file).
        """
        super().__init__()
        self.save_hyperparameters()
        self.task = get_task(task, task_args)
        self.task.check_data_dir(data_dir)
        if predict_splits not in ("eval", "test"):
            raise SsmloraError(f"data.predict_splits={predict_splits!r}: use eval or test.")
        if predict_splits == "test" and not (
            hasattr(self.task, "submission_splits") or getattr(self.task, "test_split", False)
        ):
            raise SsmloraError(
                f"data.predict_splits=test: task {task!r} has no test split that predict can "
                "serve (GLUE tasks and tasks with a held-out test split have one; a custom task "
                "needs data.task_args.test_file or test_split_name). Use data.predict_splits: "
                "eval to predict the evaluation splits."
            )
        self._predict_splits: list[str] | None = None
        if max_length <= 0 or batch_size <= 0:
            raise SsmloraError("data.max_length and data.batch_size must be positive.")
        supported = getattr(self.task, "objectives", ("classification",))
        self.objective = objective or supported[0]
        if self.objective not in supported:
            raise SsmloraError(
                f"Task {task!r} supports data.objective in {list(supported)}, not {objective!r}."
            )
        if truncation not in TRUNCATION_POLICIES:
            raise SsmloraError(
                f"data.truncation={truncation!r}: use one of {', '.join(TRUNCATION_POLICIES)}."
            )
        # A tokenizer from outside the task is checked against a sample of the training text
        # (see check_tokenizer) when that split is prepared; the task's own ones need no check.
        self._check_tokenizer = tokenizer is not None
        if tokenizer is not None:
            self.tokenizer = load_tokenizer(tokenizer, gguf_file=tokenizer_gguf_file)
        else:
            self.tokenizer = self.task.builtin_tokenizer()
            if self.tokenizer is None:
                raise SsmloraError(
                    f"Task {task!r} needs a tokenizer: set model.backbone.name_or_path or "
                    "model.backbone.tokenizer to a hub id or a local folder."
                )
        # Classification pools the first token (encoders) or the last non-pad one (decoders), and
        # sequence adapters (HRM) must not read pads before real tokens: pad on the right.
        self.tokenizer.padding_side = "right"
        is_lm = self.objective == "causal_lm"
        lm_eval = getattr(self.task, "lm_eval", "choice")
        if max_new_tokens is None:
            max_new_tokens = getattr(self.task, "max_new_tokens", 0)
        if is_lm and lm_eval == "generate" and max_new_tokens <= 0:
            raise SsmloraError("data.max_new_tokens must be positive for a generation task.")
        if is_lm and self.tokenizer.pad_token_id is None:  # Llama/Mistral tokenizers have none
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.task_info = TaskInfo(
            task=task,
            num_labels=self.task.num_labels,
            problem_type="regression" if self.task.is_regression else "single_label_classification",
            metrics=self.task.lm_metrics if is_lm else self.task.metrics,
            eval_splits=self.task.eval_splits,
            vocab_size=id_space(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            objective=self.objective,
            lm_eval=lm_eval,
            max_new_tokens=max_new_tokens if is_lm and lm_eval != "choice" else 0,
            label_names=None if is_lm else getattr(self.task, "label_names", None),
            max_length=max_length,
            grouped=getattr(self.task, "grouped", False),
        )
        self.lm_format = LMFormat(max_length, truncation, lm_eval, self.task_info.max_new_tokens)
        if is_lm:
            pad = self.tokenizer.pad_token_id
            self.collator = CausalLMCollator(pad, lm_eval, train=True)
            self.eval_collator = CausalLMCollator(pad, lm_eval, train=False)
            self.predict_collator = CausalLMCollator(pad, lm_eval, train=False, predict=True)
        else:
            self.collator = self.eval_collator = DataCollatorWithPadding(self.tokenizer)
            self.predict_collator = self.eval_collator
        self.splits: dict[str, datasets.Dataset] = {}

    def eval_split_names(self, stage: str) -> list[str]:
        """The splits evaluated in ``stage``: the task's evaluation splits, or for ``test`` their
        held-out ``test`` counterparts when the task has them (``test_split``; GLUE has not)."""
        splits = list(self.task.eval_splits)
        if stage == "test" and getattr(self.task, "test_split", False):
            return [s.replace("validation", "test") for s in splits]
        return splits

    def predict_split_names(self) -> list[str]:
        """The splits ``predict`` runs on, one dataloader each: the evaluation splits, or under
        ``predict_splits: test`` the task's unlabelled test splits (GLUE, ``submission_splits``:
        their files are checked here, naming any that is missing) or its held-out ones."""
        if self.hparams.predict_splits == "eval":
            return self.eval_split_names("predict")
        if self._predict_splits is None:  # decided once: the writer names the same splits
            submission = getattr(self.task, "submission_splits", None)
            if submission is not None:
                self._predict_splits = list(submission(self.hparams.data_dir))
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
        is_lm = self.objective == "causal_lm"
        ds = (
            self.task.load_lm_split(split, hp.data_dir)
            if is_lm
            else self.task.load_split(split, hp.data_dir)
        )
        limit = hp.max_train_samples if split == "train" else hp.max_eval_samples
        if limit is not None and limit < len(ds):
            if INDEX_COLUMN in ds.column_names and limit > 0:
                rank_zero_warn(
                    f"data.max_eval_samples={limit}: the {self.task.name} {split} predictions "
                    f"cover {limit} of its {len(ds)} examples; a benchmark submission needs them "
                    "all (leave data.max_eval_samples unset)."
                )
            ds = ds.shuffle(seed=hp.sample_seed).select(range(limit))
        if len(ds) == 0:
            raise SsmloraError(
                f"The {self.task.name} {split} split is empty"
                + (
                    f" (max_{'train' if split == 'train' else 'eval'}_samples={limit})"
                    if limit == 0
                    else ""
                )
                + ": check the data files and data.max_train_samples / data.max_eval_samples."
            )
        if split == "train" and self._check_tokenizer:
            columns = [c for c in TEXT_COLUMNS if c in ds.column_names]
            sample = ds.select(range(min(TOKENIZER_SAMPLE, len(ds))))
            texts = [row[c] for row in sample for c in columns if isinstance(row[c], str)]
            check_tokenizer(self.tokenizer, texts, f"the first {len(sample)} {split} examples")
        if self.task_info.grouped and GROUP_COLUMN not in ds.column_names:
            raise SsmloraError(
                f"Task {self.task.name!r} is grouped but its {split} split has no "
                f"{GROUP_COLUMN!r} column (see ssmlora_app.tasks.base.GROUP_COLUMN)."
            )
        if is_lm:
            render = getattr(self.task, "render_lm", None)  # tokenizer-dependent formatting
            if render is not None:
                ds = render(ds, self.tokenizer)
            missing = [c for c in LM_COLUMNS if c not in ds.column_names]
            if missing:
                raise SsmloraError(
                    f"Task {self.task.name!r} split {split!r} lacks the causal-LM columns "
                    f"{missing} (see ssmlora_app.tasks.base.LMTask)."
                )
            return ds.map(
                partial(encode_lm_example, tokenizer=self.tokenizer, fmt=self.lm_format),
                remove_columns=[
                    c for c in ds.column_names if c not in ("label", "references", GROUP_COLUMN)
                ],
                desc=f"Tokenising {self.task.name} {split}",
            )
        ds = ds.map(
            partial(_tokenize, tokenizer=self.tokenizer, max_length=hp.max_length),
            batched=True,
            remove_columns=["text_a", "text_b"],
            desc=f"Tokenising {self.task.name} {split}",
        )
        return ds.rename_column("label", "labels")

    def majority_baseline(self) -> float | None:
        """Accuracy of always predicting the most frequent class of the first evaluation split."""
        if self.task.is_regression:
            return None
        if self.objective == "causal_lm" and self.task_info.lm_eval != "choice":
            return None
        split = self.task.eval_splits[0]
        ds = self.splits.get(split) or self._prepare(split)
        labels = ds["label" if self.objective == "causal_lm" else "labels"]
        return Counter(labels).most_common(1)[0][1] / len(labels)

    def _loader(self, split: str, shuffle: bool, collate_fn=None) -> DataLoader:
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
            collate_fn=collate_fn or (self.collator if shuffle else self.eval_collator),
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
        return self._loader("train", shuffle=True)

    def _eval_loaders(self, stage: str = "validate") -> list[DataLoader]:
        return [self._loader(s, shuffle=False) for s in self.eval_split_names(stage)]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        """The splits of :meth:`predict_split_names`, with the generation inputs for causal LM
        (see :class:`~.lm.CausalLMCollator`); an unlabelled split's batches carry no labels."""
        loaders = []
        for split in self.predict_split_names():
            collate_fn = self.predict_collator
            if INDEX_COLUMN in self.splits[split].column_names:
                collate_fn = _WithoutColumns(collate_fn, ("labels", INDEX_COLUMN))
            loaders.append(self._loader(split, shuffle=False, collate_fn=collate_fn))
        return loaders
