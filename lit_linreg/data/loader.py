"""Batches cut from whole tensors: the fast path for a linear model, with a shuffle a resumed run replays.

The usual `TensorDataset` + `DataLoader(shuffle=True)` indexes one row at a time in Python and collates the
rows: for a linear model that is nearly all of an epoch. `TensorLoader` cuts each batch as a slice (in order)
or an `index_select` gather (shuffled) of tensors already on the training device.

Under DDP each rank holds only its own share of the rows (see `InMemoryDataModule.load_share`), so a loader
never shards: it shuffles and cuts the rows it was given. Ranks may hold a few rows more or fewer; a training
loader is told the number of batches (`n_batches`, the same on every rank, so DDP's collectives stay in step)
and cuts its rows into that many batches of equal size, within one row.

A loader is stateful in Lightning's sense (`state_dict` / `load_state_dict`): the fit loop saves where in
the epoch it is with every checkpoint, and a run resumed from a mid-epoch checkpoint carries on at the next
batch of the same order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lit_linreg.errors import DataError


def mixed_seed(*parts: int) -> int:
    """One 32-bit seed from several numbers (numpy's SeedSequence hash).

    torch's CPU generator keeps only the low 32 bits of a seed, so `seed + (rank << 32)` would give every rank
    the same stream; a hash of the parts gives each combination its own.
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one rank's shuffle in one epoch."""
    return mixed_seed(seed, epoch, rank)


def balanced_bounds(n_rows: int, n_batches: int) -> list[int]:
    """Where `n_rows` rows are cut into `n_batches` batches of equal size within one row: n_batches + 1 offsets."""
    return [i * n_rows // n_batches for i in range(n_batches + 1)]


class EpochShuffle:
    """The order in which one process visits its rows in one epoch.

    The order is a fresh uniform permutation of the rows each epoch (shuffling without replacement),
    drawn from `seed`, the epoch and the rank, so a resumed run replays exactly the order an uninterrupted
    run saw. Lightning calls `set_epoch` at the start of every epoch on the `sampler` of each loader, which
    is why `TensorLoader.sampler` is an instance of this class.
    """

    def __init__(self, n_rows: int, seed: int = 0, shuffle: bool = True, rank: int = 0) -> None:
        self.n_rows = n_rows
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor | None:
        """Row indices in this epoch's order, or None for "all rows in order" (no shuffle)."""
        if not self.shuffle:
            return None
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, self.rank))
        return torch.randperm(self.n_rows, generator=generator)


class EpochBatches:
    """What every loader here shares: how an epoch's rows are cut into batches, and where in the epoch it is.

    A subclass sets `n_rows`, `batch_size`, `n_batches` and a `sampler` with an `epoch`, and counts the batches
    it hands out in `_yielded`. Lightning's fit loop saves `state_dict()` with every checkpoint and hands it
    back to `load_state_dict` on resume; the next pass of that epoch then starts at `_first_batch()`.
    """

    batch_sampler = None  # Lightning inspects `sampler` and `batch_sampler` as it would on a DataLoader
    n_rows: int
    batch_size: int | None
    n_batches: int | None
    _yielded = 0  # batches handed out in the current epoch: the position a checkpoint records
    _resume: dict[str, int] | None = None

    def _bounds(self) -> list[int]:
        if self.n_batches is not None:
            return balanced_bounds(self.n_rows, self.n_batches)
        step = self.batch_size or max(self.n_rows, 1)
        return [*range(0, self.n_rows, step), self.n_rows]

    def __len__(self) -> int:
        return len(self._bounds()) - 1

    def state_dict(self) -> dict[str, int]:
        """Where this epoch is: saved by Lightning's fit loop in every checkpoint."""
        return {"epoch": self.sampler.epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start the next pass of epoch `state["epoch"]` after the batches it had already handed out."""
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
        if self._resume["batches"] > len(self):  # no epoch of these rows was ever that far: the rows changed
            raise DataError(
                f"the checkpoint was saved {self._resume['batches']} batches into an epoch that now has {len(self)}:"
                " the training data changed since; resume on the data it was trained on, or fit anew"
            )

    def _first_batch(self) -> int:
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] == self.sampler.epoch:
            return resume["batches"]
        return 0


class TensorLoader(EpochBatches):
    """An iterable of batches cut from whole tensors that share their first dimension.

    Args:
        tensors: (N, ...) tensors of this rank's rows, already on the device the model trains on.
        batch_size: Rows per batch; None for all rows in one batch.
        shuffle: Reshuffle rows every epoch (see `EpochShuffle`); else keep their order.
        seed: Seed of the shuffle.
        rank: This process's rank: ranks shuffle their rows differently.
        n_batches: Cut the rows into exactly this many batches of equal size within one row (training: the
            same count on every rank); None cuts `batch_size` rows at a time, the last batch shorter.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int | None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        n_batches: int | None = None,
    ) -> None:
        self.tensors = tensors
        self.n_rows = len(tensors[0])
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.sampler = EpochShuffle(self.n_rows, seed=seed, shuffle=shuffle, rank=rank)

    def __iter__(self):
        bounds, first = self._bounds(), self._first_batch()
        self._yielded = first
        index = self.sampler.indices()
        if index is not None:
            index = index.to(self.tensors[0].device)
        for start, stop in zip(bounds[first:-1], bounds[first + 1 :], strict=True):
            self._yielded += 1
            if index is None:  # contiguous slices are views: no copy at all
                yield tuple(t[start:stop] for t in self.tensors)
            else:  # same rows as t[rows], ~2x faster on CPU
                yield tuple(t.index_select(0, index[start:stop]) for t in self.tensors)


def batches_per_epoch(max_rows: int, batch_size: int | None) -> int:
    """Training batches per epoch when the rank with the most rows holds `max_rows`: the same on every rank."""
    return max(1, math.ceil(max_rows / batch_size)) if batch_size else 1
