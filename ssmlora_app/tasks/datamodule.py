"""One LightningDataModule for every task: load, tokenise once (datasets cache), pad per batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from functools import partial

import datasets
import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from ssmlora_app.errors import SsmloraError
from ssmlora_app.tasks import TaskInfo, get_task
from ssmlora_app.tokenization import load_tokenizer


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation drawn from ``(seed, epoch)`` alone, so a run resumed from a
    checkpoint sees the same order as an uninterrupted one (Lightning calls ``set_epoch``)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def _tokenize(batch: dict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
    pair = batch["text_b"] if any(t is not None for t in batch["text_b"]) else None
    return tokenizer(batch["text_a"], pair, truncation=True, max_length=max_length)


class TaskDataModule(L.LightningDataModule):
    """Serves one task: ``train`` for fit, the task's evaluation splits for validate/test/predict.

    GLUE test labels are hidden, so ``test`` evaluates the evaluation (dev) splits, as the GLUE
    papers report them.
    """

    def __init__(
        self,
        task: str = "quickstart",
        data_dir: str | None = None,
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        sample_seed: int = 42,
        shuffle_seed: int = 0,
    ):
        """
        Args:
            task: Task name: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, or quickstart
                (generated in code).
            data_dir: Local folder with the task's files (GLUE: the original TSV layout, either the
                task folder or the GLUE root); null loads the task from the hub.
            tokenizer: Tokenizer hub id or folder; linked from ``model.backbone`` by the CLI.
                Null uses the task's own tokenizer (synthetic tasks only).
            max_length: Truncate inputs to this many tokens; batches are padded to their longest.
            batch_size: Training batch size (per device).
            eval_batch_size: Evaluation batch size; default ``batch_size``.
            num_workers: DataLoader worker processes.
            max_train_samples: Use a random subset of this many training examples (quick runs).
            max_eval_samples: Use a random subset of this many examples of each evaluation split.
            sample_seed: Seed of those subsets.
            shuffle_seed: Seed of the training order (a permutation per epoch).
        """
        super().__init__()
        self.save_hyperparameters()
        self.task = get_task(task)
        self.task.check_data_dir(data_dir)
        if max_length <= 0 or batch_size <= 0:
            raise SsmloraError("data.max_length and data.batch_size must be positive.")
        if tokenizer is not None:
            self.tokenizer = load_tokenizer(tokenizer)
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
        self.task_info = TaskInfo(
            task=task,
            num_labels=self.task.num_labels,
            problem_type="regression" if self.task.is_regression else "single_label_classification",
            metrics=self.task.metrics,
            eval_splits=self.task.eval_splits,
            vocab_size=len(self.tokenizer),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self.collator = DataCollatorWithPadding(self.tokenizer)
        self.splits: dict[str, datasets.Dataset] = {}

    def setup(self, stage: str) -> None:
        needed = list(self.task.eval_splits)
        if stage == "fit":
            needed.insert(0, "train")
        for split in needed:
            if split not in self.splits:
                self.splits[split] = self._prepare(split)

    def _prepare(self, split: str) -> datasets.Dataset:
        hp = self.hparams
        ds = self.task.load_split(split, hp.data_dir)
        limit = hp.max_train_samples if split == "train" else hp.max_eval_samples
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=hp.sample_seed).select(range(limit))
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
        split = self.task.eval_splits[0]
        labels = (self.splits.get(split) or self._prepare(split))["labels"]
        return Counter(labels).most_common(1)[0][1] / len(labels)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.splits[split],
            batch_size=hp.batch_size if shuffle else (hp.eval_batch_size or hp.batch_size),
            sampler=EpochShuffleSampler(len(self.splits[split]), hp.shuffle_seed)
            if shuffle
            else None,
            collate_fn=self.collator,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            # Its own generator: creating an iterator then draws no number from the global RNG,
            # whose state a resumed run restores (see AdapterModule.on_load_checkpoint).
            generator=torch.Generator().manual_seed(hp.shuffle_seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def _eval_loaders(self) -> list[DataLoader]:
        return [self._loader(s, shuffle=False) for s in self.task.eval_splits]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()
