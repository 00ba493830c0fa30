"""Batches cut from whole tensors: the fast path for a linear model, with a shuffle a resumed run replays.

The usual `TensorDataset` + `DataLoader(shuffle=True)` indexes one row at a time in Python and collates the
rows: for a linear model that is nearly all of an epoch. `TensorLoader` cuts each batch as a slice (in order)
or an `index_select` gather (shuffled) of tensors already on the training device.
"""

from __future__ import annotations

import math

import torch


class EpochShuffle:
    """Which rows of the training set one process visits in one epoch.

    The order is a fresh uniform permutation of all rows each epoch (shuffling without replacement),
    drawn from `seed + epoch`, so a resumed run replays exactly the order an uninterrupted run saw.
    Under DDP, rank r takes every `world_size`-th row of that permutation, so the ranks see disjoint
    rows; the `N % world_size` rows left over change each epoch.

    Lightning calls `set_epoch` at the start of every epoch on the `sampler` of each loader, which is
    why `TensorLoader.sampler` is an instance of this class.
    """

    def __init__(self, n_rows: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n_rows = n_rows
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.rank = 0
        self.world_size = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rows_per_rank(self) -> int:
        if self.shuffle:
            return self.n_rows // self.world_size  # equal counts keep DDP's collectives in step
        return len(range(self.rank, self.n_rows, self.world_size))

    def indices(self) -> torch.Tensor | None:
        """Row indices for this rank and epoch, or None for "all rows in order" (one process, no shuffle)."""
        if not self.shuffle:
            if self.world_size == 1:
                return None
            return torch.arange(self.rank, self.n_rows, self.world_size)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n_rows, generator=generator)
        return perm[self.rank :: self.world_size][: self.rows_per_rank()]


class TensorLoader:
    """An iterable of batches cut from whole tensors that share their first dimension.

    Args:
        tensors: (N, ...) tensors, already on the device the model trains on.
        batch_size: Rows per batch; None for the whole (per-rank) set in one batch.
        shuffle: Reshuffle rows every epoch (see `EpochShuffle`); else keep file order.
        seed: Seed of the shuffle.
    """

    batch_sampler = None  # Lightning inspects `sampler` and `batch_sampler` as it would on a DataLoader

    def __init__(self, *tensors: torch.Tensor, batch_size: int | None, shuffle: bool = False, seed: int = 0):
        self.tensors = tensors
        self.batch_size = batch_size
        self.sampler = EpochShuffle(len(tensors[0]), seed=seed, shuffle=shuffle)

    def shard(self, rank: int, world_size: int) -> TensorLoader:
        self.sampler.rank, self.sampler.world_size = rank, world_size
        return self

    def _batch_rows(self) -> int:
        return self.batch_size or max(self.sampler.rows_per_rank(), 1)

    def __len__(self) -> int:
        return math.ceil(self.sampler.rows_per_rank() / self._batch_rows())

    def __iter__(self):
        n, step = self.sampler.rows_per_rank(), self._batch_rows()
        index = self.sampler.indices()
        if index is None:  # contiguous slices are views: no copy at all
            for start in range(0, n, step):
                yield tuple(t[start : start + step] for t in self.tensors)
            return
        index = index.to(self.tensors[0].device)
        for start in range(0, n, step):
            rows = index[start : start + step]
            yield tuple(t.index_select(0, rows) for t in self.tensors)  # same rows as t[rows], ~2x faster on CPU
