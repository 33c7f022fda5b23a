"""Resumable, rank-sharded data loading: epoch-seeded order, skip of already-seen batches, worker seeding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.seeding import derive_seed, worker_init


class EpochBatchSampler(Protocol):
    """A batch sampler whose order is a function of the epoch and which can skip a prefix of batches."""

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None: ...
    def __iter__(self) -> Iterator[list[int]]: ...
    def __len__(self) -> int: ...  # batches in a full epoch, whatever the skip


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices, seeded by (seed, epoch), sharded across ranks.

    Like `DistributedSampler`, but the permutation comes from a dedicated generator and a resumed run
    can skip the samples this rank already consumed in the interrupted epoch.
    """

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True) -> None:
        if length <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.skip = 0, 0
        if drop_last:
            self.per_rank = length // world_size
        else:
            self.per_rank = -(-length // world_size)
        if self.per_rank == 0:
            raise ValueError(f"dataset of {length} items is smaller than the world size {world_size}")

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.world_size
        order = (order * (1 + total // self.length))[:total] if total > self.length else order[:total]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return self.per_rank - self.skip


class TrainLoader:
    """A DataLoader rebuilt every epoch so datasets and workers see the epoch (and the resume point)."""

    def __init__(self, dataset: Dataset, *, batch_size: int | None = None, sampler: EpochSampler | None = None,
                 batch_sampler: EpochBatchSampler | None = None, num_workers: int = 0,
                 collate_fn: Callable | None = None, pin_memory: bool = False, seed: int = 0, rank: int = 0,
                 drop_last: bool = True) -> None:
        if (sampler is None) == (batch_sampler is None):
            raise ValueError("give exactly one of sampler / batch_sampler")
        if sampler is not None and batch_size is None:
            raise ValueError("batch_size is required with a sampler")
        self.dataset, self.batch_size, self.sampler, self.batch_sampler = dataset, batch_size, sampler, batch_sampler
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
        self.seed, self.rank, self.drop_last = seed, rank, drop_last
        self.epoch, self.skip_batches = 0, 0
        if len(self) == 0:
            raise ValueError(
                f"training loader is empty: {len(dataset)} items do not fill one batch of {batch_size}")

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, skip_batches * self.batch_size)
        else:
            self.batch_sampler.set_epoch(epoch, skip_batches)

    def __len__(self) -> int:
        """Batches in a full epoch on this rank (independent of the resume point)."""
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = self.sampler.per_rank
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        kwargs: dict[str, Any] = dict(
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            worker_init_fn=worker_init(self.seed, self.epoch, self.rank) if self.num_workers else None,
            persistent_workers=False,  # workers must be rebuilt to see the new epoch
            # A private generator: creating the iterator must not consume the global torch RNG, or a
            # resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.rank)),
        )
        if self.sampler is not None:
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                                drop_last=self.drop_last, **kwargs)
        else:
            loader = DataLoader(self.dataset, batch_sampler=self.batch_sampler, **kwargs)
        return iter(loader)


def build_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, collate_fn: Callable | None = None,
                      pin_memory: bool = False) -> DataLoader:
    """Ordered loader over the whole dataset (no shuffling, no dropping), for feature extraction."""
    if len(dataset) == 0:
        raise ValueError("evaluation dataset is empty")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=pin_memory)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Recursively move tensors of a batch (dict / list / tuple) to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch
