"""Samplers that make runs reproducible across resumes and across the number of processes.

Lightning's own distributed sampler pads evaluation sets with duplicated examples and shuffles
differently for each world size; ours do neither, so ``trainer.use_distributed_sampler`` is off
(the CLI's default) and the data module builds these with the trainer's rank and world size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Training order: one permutation per ``(seed, epoch)``, nothing else.

    With ``world_size`` W > 1 and per-process batch B, the permutation is cut into global batches
    of B·W and rank r takes the r-th B of each: W processes then see exactly the batches one
    process with batch B·W sees, and DDP's averaged gradient is that batch's gradient. A final
    partial global batch is split evenly across ranks, or skipped if it has fewer than W examples
    (every rank must take the same number of steps).

    ``batches_done`` (if given) says how many batches of the current epoch were already trained
    when an iteration starts: a run resumed from a mid-epoch checkpoint then continues with the
    next batch of the same order instead of replaying the epoch.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        batches_done: Callable[[], int] | None = None,
    ):
        self.size, self.seed, self.epoch = size, seed, 0
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.batches_done = batches_done

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.size
        global_batch = self.batch_size * self.world_size
        full, rest = divmod(self.size, global_batch)
        tail = len(range(self.rank, rest, self.world_size)) if rest >= self.world_size else 0
        return full * self.batch_size + tail

    def __iter__(self) -> Iterator[int]:
        skip = self.batch_size * (self.batches_done() if self.batches_done else 0)
        return iter(self._order()[skip:])

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.world_size == 1:
            return order
        global_batch, b, r = self.batch_size * self.world_size, self.batch_size, self.rank
        mine: list[int] = []
        for start in range(0, self.size, global_batch):
            chunk = order[start : start + global_batch]
            if len(chunk) == global_batch:
                mine += chunk[r * b : (r + 1) * b]
            elif len(chunk) >= self.world_size:
                mine += chunk[r :: self.world_size]
        return mine


class ResumableDataLoader(DataLoader):
    """A DataLoader Lightning treats as resumable (its ``state_dict`` protocol): the position in
    the epoch is not stored here but read from the training loop by :class:`EpochShuffleSampler`
    when iteration restarts, so it always equals the batches actually trained."""

    def state_dict(self) -> dict:
        return {"epoch": getattr(self.sampler, "epoch", 0)}

    def load_state_dict(self, state: dict) -> None:
        return None


class ShardSampler(Sampler[int]):
    """Evaluation: rank r of W takes examples r, r+W, r+2W, ... in order; no example is
    duplicated (metrics are gathered across ranks), none is dropped."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
