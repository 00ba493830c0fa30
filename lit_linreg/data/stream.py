"""Batches streamed from a table's row groups as the epoch goes: data larger than memory (`--data.in_memory false`).

A `RowGroupStream` holds two windows of row groups whatever the table's size: a background thread reads the
next ones (pyarrow decodes with the GIL released, so reading overlaps training), copies each into a buffer rows
first (one blocked transpose of Parquet's columns) and queues windows of them, going on from an epoch's last
window to the next epoch's first; the loader gathers each batch's rows from a window with one `index_select`:
the (rows, columns) tensors the model takes, its own copy. The reader keeps to one core and the training
to the others (see `_TrainingCores`).

What the shuffle guarantees, each epoch, from `seed`, the epoch and the rank alone (so a resumed run replays it):
- every row of this rank's share is visited exactly once;
- the order of the row groups is a fresh uniform permutation;
- rows are gathered, in that order, into windows of at least `buffer_rows` rows (whole row groups), and each
  window is uniformly permuted.
What it does not: two rows more than a window apart in the file's order are never swapped across windows, so
a table sorted by a column stays roughly sorted at the scale of windows. Row groups smaller than the window,
and a window much larger than a batch, make batches closer to uniform samples; `python -m lit_linreg.tables.convert`
rewrites a table with small row groups.

A full batch (`batch_size` None) is never gathered: the epoch's one batch is a `StreamedBatch` that reads the
rows block by block as the model uses it (`block_rows`), so its memory does not grow with the table's rows.

Like `TensorLoader`, a training stream cuts the same number of batches on every rank (`n_batches`), and is
stateful in Lightning's sense: a checkpoint records the epoch and the batches handed out, and a resumed
stream replays the epoch's reads and hands out the rest.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lit_linreg.data.loader import EpochBatches, mixed_seed
from lit_linreg.data.read_ahead import ReadAhead
from lit_linreg.model.row_blocks import RowBlocks

Batch = tuple[torch.Tensor, ...]


class StreamEpoch:
    """The epoch a stream is in: Lightning calls `set_epoch` on a loader's `sampler` at every epoch start."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class RowGroupStream(EpochBatches):
    """An iterable of batches cut from row groups read in the background, shuffled within windows.

    Args:
        read: Reads one row group and returns `(columns, rows)`: its columns first, (in_features, n) and
            (out_features, n), or just the first, as tensors (Parquet's layout, copied once into the shuffle's
            buffer); and `rows`, the positions of this split's rows among the n (a 1-D int64 tensor), or None
            for all n. Batches come out rows first, (B, in_features).
        groups: This rank's row groups, in the table's order.
        n_rows: How many rows `read` returns over all `groups` (the statistics pass counted them).
        batch_size: Rows per batch; None for all rows in one batch (see `block_rows`).
        shuffle: Reshuffle every epoch (see the module docstring); else the table's order.
        seed: Seed of the shuffle.
        rank: This process's rank: ranks shuffle differently.
        n_batches: Cut exactly this many batches of equal size within one row (training: the same on every
            rank); None cuts `batch_size` rows at a time.
        buffer_rows: Rows per shuffle window, at least.
        prefetch: Shuffle windows read ahead of the one in use.
        block_rows: With `batch_size` None, hand out the epoch's one batch as a `StreamedBatch` that reads its
            rows in blocks of this many as it is used: a full batch whatever the table's size. None gathers it.
    """

    def __init__(
        self,
        read: Callable[[Any], tuple[Batch, torch.Tensor | None]],
        groups: Sequence[Any],
        n_rows: int,
        batch_size: int | None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        n_batches: int | None = None,
        buffer_rows: int = 262_144,
        prefetch: int = 1,
        block_rows: int | None = None,
    ) -> None:
        if block_rows is not None and (batch_size is not None or shuffle):
            raise ValueError("block_rows cuts the one batch of an unshuffled stream with batch_size None")
        self.read, self.groups, self.n_rows = read, list(groups), n_rows
        self.block_rows = block_rows
        self.batch_size, self.shuffle, self.seed, self.rank = batch_size, shuffle, seed, rank
        self.n_batches, self.buffer_rows, self.prefetch = n_batches, buffer_rows, prefetch
        self.sampler = StreamEpoch()
        self._pool: dict | None = None  # the shuffle's tensors, kept for the next epoch (see `_windows`)
        self._ahead: tuple[int, ReadAhead] | None = None  # the next epoch's reader, started early

    def __iter__(self) -> Iterator[Batch | StreamedBatch]:
        epoch, first = self.sampler.epoch, self._first_batch()
        self._yielded = first
        if self.block_rows is not None:  # the epoch's one batch, its rows read as it is used
            if first == 0:
                self._yielded = 1
                yield StreamedBatch(self, epoch)
            return
        for i, batch in self._batches(epoch, self._bounds(), first):
            self._yielded = i + 1
            yield batch
            del batch  # before the next is gathered

    def _batches(self, epoch: int, bounds: list[int], first: int) -> Iterator[tuple[int, Batch]]:
        """(i, batch i) for the batches `bounds` cut from the epoch's rows, from batch `first` on."""
        # Windows are read, joined and shuffled in the background, one ahead of the one batches are cut from. A
        # shuffled stream's reader goes on from one epoch's last window to the next epoch's first, so an epoch
        # finds its first window read already (if it is the next epoch: else the reader is stopped).
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] != epoch:
            ahead[1].close()
            ahead = None
        windows = ahead[1] if ahead is not None else self._read_ahead(epoch)
        cores = _TrainingCores(lower=self.shuffle)
        window: _Window | None = None  # the window batches are cut from, and how far into it they are
        offset, last = 0, len(bounds) - 2
        try:
            for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
                pieces, need = [], stop - start
                while need:
                    if window is None or offset == len(window.picks):
                        window, offset = next(windows, _EPOCH_END), 0  # the last is let go: it may be refilled
                        if window is _EPOCH_END:
                            raise RuntimeError(f"the row groups held fewer rows than the {self.n_rows} counted")
                    take = min(need, len(window.picks) - offset)
                    if i >= first:  # a resumed epoch replays the reads of the batches it had, to keep the order
                        pieces.append(window.gather(offset, offset + take))
                    offset, need = offset + take, need - take
                if i < first:
                    continue
                # A batch is gathered from one window, or joins the end of one and the start of the next;
                # either way its tensors are its own (the window's are refilled a few windows on).
                batch = pieces[0] if len(pieces) == 1 else tuple(torch.cat(p) for p in zip(*pieces, strict=True))
                if i == last:
                    # Lightning asks a loader with a length for no batch past its last, so the epoch ends here,
                    # before the last batch is handed out (its rows are gathered): the epoch's end is taken
                    # from the reader, which then fills the last window's buffer with the next epoch's rows.
                    self._end_of_epoch(windows)
                    if self.shuffle:
                        self._ahead = (epoch + 1, windows)
                    else:
                        windows.close()
                    windows = None
                    cores.restore()
                yield i, batch
                batch = pieces = None  # let go before the next is gathered: one batch of rows at a time
        finally:
            cores.restore()
            if windows is not None:
                windows.close()

    def close(self) -> None:
        """Stops the reader that reads the next epoch ahead, if one does: it holds two buffers and whatever
        `read` holds (a DataModule, its Trainer) until then. `TableDataModule.teardown` calls it."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].close()

    def _end_of_epoch(self, windows: ReadAhead) -> None:
        """Takes what the reader hands on after the epoch's last batch, up to the end marker: windows with no
        rows of this split, if any."""
        while (window := next(windows, _EPOCH_END)) is not _EPOCH_END:
            if len(window.picks):
                raise RuntimeError(f"the row groups held more rows than the {self.n_rows} counted")

    def _read_ahead(self, epoch: int) -> ReadAhead:
        """The background reader of the windows of `epoch` (and, shuffled, of the epochs after it), each epoch's
        followed by `_EPOCH_END`."""
        return ReadAhead(lambda: self._epochs(epoch), held=self.prefetch + 1, free_items=(_EPOCH_END,))

    def _epochs(self, epoch: int) -> Iterator[Any]:
        """The windows of `epoch` and, when shuffling, of every epoch after it, in each epoch's order from the
        seed, the epoch and the rank; `_EPOCH_END` after each epoch's."""
        # An epoch that finds the buffers taken (one abandoned, its reader not yet stopped) makes its own.
        rows_hint = min(self.buffer_rows, self.n_rows) if self.shuffle else 0  # never more than the rows
        pool, self._pool = self._pool or _JoinPool(self.prefetch + 1, rows_hint), None
        try:
            for e in itertools.count(epoch) if self.shuffle else (epoch,):
                order = list(self.groups)
                generator = torch.Generator().manual_seed(mixed_seed(self.seed, e, self.rank))
                if self.shuffle:
                    order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
                yield from self._windows(order, generator, pool)
                yield _EPOCH_END
        finally:
            if self.shuffle:
                self._pool = pool

    def _windows(self, order: list, generator: torch.Generator, pool: _JoinPool) -> Iterator[_Window]:
        """The epoch's rows in windows: each row group read is copied whole, rows first, into a join buffer,
        and a window is the positions of this split's rows in it (permuted, when shuffling).

        Shuffled, a window joins whole row groups until it holds `buffer_rows` of this split's rows; in order, it
        is one row group. The join buffers rotate among `prefetch + 1`, from window to window and from epoch
        to epoch: the one batches are gathered from and those read ahead of it, and `ReadAhead` refills one
        only once the loop has taken the next window (see `__iter__`). A shuffled stream keeps them from epoch to
        epoch: refilling a tensor costs no page faults, and a fresh one does.
        """
        picks, rows = [], 0
        join = pool.current()
        for group in order:
            columns, selected = self.read(group)
            filled = join.append(columns)
            picks.append(np.arange(filled, join.filled) if selected is None else selected.numpy() + filled)
            rows += len(picks[-1])
            del columns, selected  # copied: let go before the next group is read
            if not self.shuffle or rows >= self.buffer_rows:
                yield join.window(picks, generator if self.shuffle else None)
                picks, rows = [], 0
                join = pool.advance()
        if picks:
            yield join.window(picks, generator if self.shuffle else None)
            pool.advance()


class StreamedBatch(RowBlocks):
    """A stream's full batch: iterating it reads the epoch's rows again, in (x, y) blocks of `block_rows`, each let
    go before the next is gathered (see model/row_blocks.py, which trains on it block by block).

    Lightning moves a batch to the training device by calling its `to`: the blocks are moved as they are read.
    """

    def __init__(self, stream: RowGroupStream, epoch: int) -> None:
        self.stream, self.epoch, self.n_rows = stream, epoch, stream.n_rows
        self.device: torch.device | None = None

    def __iter__(self) -> Iterator[Batch]:
        bounds = [*range(0, self.n_rows, self.stream.block_rows), self.n_rows]
        for _, block in self.stream._batches(self.epoch, bounds, 0):
            yield block if self.device is None else tuple(t.to(self.device) for t in block)
            del block  # before the next is gathered

    def to(self, device: torch.device | str, **kwargs: Any) -> StreamedBatch:
        self.device = torch.device(device)
        return self


class _TrainingCores:
    """While a shuffled epoch streams, the training's torch ops run on one core fewer: the reader's.

    The reader works in its one thread: pyarrow decodes without its thread pool, the shuffle is numpy's, and
    torch's transposing copy runs in the calling thread alone (measured: one core busy, however large the row
    group). On two cores, the training's ops in a team of two threads (as in memory) left the reader no core:
    each op waited for the thread the reader had displaced, and the reader fell behind (epochs about 15% longer,
    measured). Lowered in the thread that trains when the epoch starts, and given back before its last batch
    is handed out (Lightning asks for no batch after it); streams iterated within the epoch (validation) leave
    the count alone. A full-batch stream keeps every core, so that it trains bit for bit as in memory: a
    thread count changes the order of a sum.
    """

    _lowered = threading.local()  # whether this thread's count is lowered already

    def __init__(self, lower: bool) -> None:
        self.threads = None
        if lower and not getattr(self._lowered, "on", False) and torch.get_num_threads() > 1:
            self.threads, self._lowered.on = torch.get_num_threads(), True
            torch.set_num_threads(self.threads - 1)

    def restore(self) -> None:
        """Gives the core back, once, in the thread that lowered the count."""
        if self.threads is not None and getattr(self._lowered, "on", False):
            torch.set_num_threads(self.threads)
            self._lowered.on, self.threads = False, None


class _Window:
    """Rows of a join buffer, in the order batches take them: `parts` (capacity, c) tensors and `picks` (m,)."""

    def __init__(self, parts: tuple[torch.Tensor, ...], picks: torch.Tensor) -> None:
        self.parts, self.picks = parts, picks

    def gather(self, start: int, stop: int) -> Batch:
        """The window's rows start to stop: (stop - start, c) tensors of their own, one per part."""
        rows = self.picks[start:stop]
        return tuple(part.index_select(0, rows) for part in self.parts)


class _Join:
    """A buffer row groups are copied into one after another, rows first: one (capacity, c) tensor per part.

    Row groups come columns first, (c, n) (Parquet's layout): each is transposed into the buffer by one torch
    copy, blocked, so several times faster than writing each column with a stride. A batch is then one
    `index_select` of whole rows, which needs no transpose.
    """

    def __init__(self, rows_hint: int = 0) -> None:
        self.rows_hint = rows_hint  # rows a window usually fills: the buffer is first made that large
        self.parts: list[torch.Tensor] = []
        self.filled = 0

    def append(self, columns: Sequence[torch.Tensor]) -> int:
        """Copy one row group's (c, n) columns in after the rows already filled; returns where they start."""
        heights, width = [len(part) for part in columns], columns[0].shape[1]
        start, self.filled = self.filled, self.filled + width
        if len(self.parts) != len(heights) or len(self.parts[0]) < self.filled:  # grown rarely: windows are alike
            grown = [torch.empty(max(self.filled, self.rows_hint + width), c) for c in heights]
            for new, old in zip(grown, self.parts, strict=False):
                new[:start].copy_(old[:start])
            self.parts = grown
        for part, into in zip(columns, self.parts, strict=True):
            into[start : self.filled].copy_(part.T)
        return start

    def window(self, picks: list[np.ndarray], generator: torch.Generator | None) -> _Window:
        """The filled rows' `picks` as a window, in a fresh uniform order given a generator; empties the join."""
        order = np.concatenate(picks)
        if generator is not None:
            order = order[torch.randperm(len(order), generator=generator).numpy()]
        self.filled = 0
        return _Window(tuple(self.parts), torch.from_numpy(order))


class _JoinPool:
    """`size` join buffers, taken in turn: `current()` is the one to fill, until `advance()` moves to the next."""

    def __init__(self, size: int, rows_hint: int) -> None:
        self.joins = [_Join(rows_hint) for _ in range(size)]
        self.count = 0

    def current(self) -> _Join:
        return self.joins[self.count % len(self.joins)]

    def advance(self) -> _Join:
        self.count += 1
        return self.current()


_EPOCH_END = object()  # what a stream's reader hands on after an epoch's last window
