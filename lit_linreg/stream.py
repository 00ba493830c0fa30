"""Batches streamed from a table's row groups as the epoch goes: data larger than memory (`--data.in_memory false`).

A `RowGroupStream` never holds more than a few row groups: a background thread reads the next ones (pyarrow
decodes with the GIL released, so reading overlaps training) into a small queue, and the loader cuts batches
from them. Rows stay in Parquet's own layout, a column at a time ((columns, rows) tensors), until a batch is
cut: the shuffle then gathers whole columns, and only each batch is turned into the (rows, columns) tensor
the model takes, which is several times cheaper than transposing every row group.

What the shuffle guarantees, each epoch, from `seed`, the epoch and the rank alone (so a resumed run replays it):
- every row of this rank's share is visited exactly once;
- the order of the row groups is a fresh uniform permutation;
- rows are gathered, in that order, into windows of at least `buffer_rows` rows (whole row groups), and each
  window is uniformly permuted.
What it does not: two rows more than a window apart in the file's order are never swapped across windows, so
a table sorted by a column stays roughly sorted at the scale of windows. Row groups smaller than the window,
and a window much larger than a batch, make batches closer to uniform samples; `python -m lit_linreg.convert`
rewrites a table with small row groups.

Like `TensorLoader`, a training stream cuts the same number of batches on every rank (`n_batches`), and is
stateful in Lightning's sense: a checkpoint records the epoch and the batches handed out, and a resumed
stream replays the epoch's reads and hands out the rest.
"""

from __future__ import annotations

import atexit
import itertools
import queue
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lit_linreg.loader import EpochBatches, mixed_seed

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
            (out_features, n), or just the first, each a tensor or a sequence of its (n,) rows (the columns as
            Parquet holds them, copied once, into the shuffle's buffer); and `rows`, the positions of this
            split's rows among the n (a 1-D int64 tensor), or None for all n. Batches come out rows first,
            (B, in_features).
        groups: This rank's row groups, in the table's order.
        n_rows: How many rows `read` returns over all `groups` (the statistics pass counted them).
        batch_size: Rows per batch; None for all rows in one batch.
        shuffle: Reshuffle every epoch (see the module docstring); else the table's order.
        seed: Seed of the shuffle.
        rank: This process's rank: ranks shuffle differently.
        n_batches: Cut exactly this many batches of equal size within one row (training: the same on every
            rank); None cuts `batch_size` rows at a time.
        buffer_rows: Rows per shuffle window, at least.
        prefetch: Shuffle windows read ahead of the one in use.
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
    ) -> None:
        self.read, self.groups, self.n_rows = read, list(groups), n_rows
        self.batch_size, self.shuffle, self.seed, self.rank = batch_size, shuffle, seed, rank
        self.n_batches, self.buffer_rows, self.prefetch = n_batches, buffer_rows, prefetch
        self.sampler = StreamEpoch()
        self._pool: dict | None = None  # the shuffle's tensors, kept for the next epoch (see `_windows`)
        self._ahead: tuple[int, _ReadAhead] | None = None  # the next epoch's reader, started early

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.sampler.epoch
        bounds, first = self._bounds(), self._first_batch()
        self._yielded = first
        # Windows are read, joined and shuffled in the background, one ahead of the one batches are cut from;
        # the last epoch began this one's when it handed out its last batch.
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] != epoch:
            ahead[1].close()
            ahead = None
        windows = ahead[1] if ahead is not None else self._read_ahead(epoch)
        window: Batch = ()  # the window batches are cut from, and how far into it they are
        offset = 0
        try:
            for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                parts, need = [], stop - start
                while need:
                    if not window or offset == window[0].shape[1]:
                        # What this batch has of the window ends here is copied before the next is taken: once
                        # it is, the reader may refill this window's tensor.
                        parts = [tuple(t.clone() for t in part) for part in parts]
                        window, offset = next(windows, ()), 0
                        if not window:
                            raise RuntimeError(f"the row groups held fewer rows than the {self.n_rows} counted")
                    take = min(need, window[0].shape[1] - offset)
                    parts.append(tuple(t[:, offset : offset + take] for t in window))
                    offset, need = offset + take, need - take
                if i < first:  # a resumed epoch replays the reads of the batches it had, to keep the order
                    continue
                # A batch is cut from one window, or joins the end of one and the start of the next.
                columns = parts[0] if len(parts) == 1 else tuple(torch.cat(p, dim=1) for p in zip(*parts, strict=True))
                self._yielded = i + 1
                # (B, columns), as the in-memory loader gives, and always a copy: the window's tensor is refilled
                # a few windows on (a one-column transpose is contiguous already, and .contiguous() a view).
                yield tuple(t.T.clone(memory_format=torch.contiguous_format) for t in columns)
            # Asked past the last batch, which Lightning does before it trains on it: the next epoch's first
            # windows are read while the last steps run and validation follows.
            windows.close()
            if self.shuffle:
                self._ahead = (epoch + 1, self._read_ahead(epoch + 1))
        finally:
            windows.close()

    def _read_ahead(self, epoch: int) -> _ReadAhead:
        """The background reader of `epoch`'s windows, in the epoch's order from the seed, the epoch and the rank."""
        order = list(self.groups)
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, epoch, self.rank))
        if self.shuffle:
            order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
        return _ReadAhead(lambda: self._windows(order, generator), depth=self.prefetch)

    def _windows(self, order: list, generator: torch.Generator) -> Iterator[Batch]:
        """The epoch's rows in windows of at least `buffer_rows`, each permuted when shuffling.

        In order, a window is one row group's rows. Shuffled, each row group read is copied whole into `join`,
        and one gather takes the window's rows of this split from it, permuted, into the window's own tensor.
        Both are kept from window to window, as refilling a tensor costs no page faults and a fresh one does:
        the window tensors rotate among `prefetch + 2`, so the one batches are cut from is never refilled
        while in use (see `__iter__`).
        """
        reads = (self.read(group) for group in order)
        if not self.shuffle:
            for columns, selected in reads:
                columns = [_stacked(t) for t in columns]
                yield tuple(t.clone() if selected is None else t.index_select(1, selected) for t in columns)
            return
        # Kept from epoch to epoch too; an epoch that finds them taken (one abandoned, its reader not yet
        # stopped) makes its own.
        pool, self._pool = self._pool or {"join": None, "windows": [None] * (self.prefetch + 2)}, None
        try:
            yield from self._shuffled_windows(reads, generator, pool)
        finally:
            self._pool = pool

    def _shuffled_windows(self, reads: Iterator, generator: torch.Generator, pool: dict) -> Iterator[Batch]:
        join, windows = pool["join"], pool["windows"]
        heights: list[int] = []
        filled, rows, picks, count = 0, 0, [], 0
        for columns, selected in reads:
            heights, width = [len(t) for t in columns], len(columns[0][0])
            if join is None or join.shape[1] < filled + width:  # grown rarely: a window is about the same each time
                grown = torch.empty(sum(heights), max(filled + width, self.buffer_rows + width))
                if join is not None:
                    grown[:, :filled].copy_(join[:, :filled])
                join = pool["join"] = grown
            first = 0
            for part in columns:
                if isinstance(part, torch.Tensor):
                    join[first : first + len(part), filled : filled + width].copy_(part)
                else:
                    into = join.numpy()  # numpy copies: pyarrow's arrays are read-only, which torch warns of
                    for j, column in enumerate(part):
                        np.copyto(into[first + j, filled : filled + width], column)
                first += len(part)
            picks.append(torch.arange(filled, filled + width) if selected is None else selected + filled)
            filled, rows = filled + width, rows + len(picks[-1])
            if rows >= self.buffer_rows:
                yield self._gathered(join, picks, generator, windows, count, heights)
                filled, rows, picks, count = 0, 0, [], count + 1
        if picks:
            yield self._gathered(join, picks, generator, windows, count, heights)

    @staticmethod
    def _gathered(join, picks, generator, windows, count, heights) -> Batch:
        """The window's rows, `picks` of `join` in a fresh uniform order, into the next of the rotating `windows`."""
        picks = torch.cat(picks)
        picks = picks[torch.randperm(len(picks), generator=generator)]
        slot, size = count % len(windows), join.shape[0] * len(picks)
        if windows[slot] is None or len(windows[slot]) < size:  # flat, so that any window's (C, n) view is contiguous
            windows[slot] = torch.empty(size)
        window = windows[slot][:size].view(join.shape[0], len(picks))
        torch.index_select(join, 1, picks, out=window)  # each column gathered whole
        bounds = [0, *itertools.accumulate(heights)]
        return tuple(window[a:b] for a, b in itertools.pairwise(bounds))


def _stacked(part: torch.Tensor | Sequence) -> torch.Tensor:
    """A part `read` returned as one (c, n) tensor."""
    return part if isinstance(part, torch.Tensor) else torch.from_numpy(np.stack(part))


class _ReadAhead:
    """Runs `produce()` in a background thread, at most `depth` items ahead; an iterator here, re-raising its errors.

    `close()` (also on garbage collection of an abandoned epoch) stops the thread and waits for it.
    """

    _DONE = object()
    _LIVE: weakref.WeakSet[_ReadAhead] = weakref.WeakSet()  # stopped at exit (see `_stop_all`)

    def __init__(self, produce: Callable[[], Iterator[Any]], depth: int) -> None:
        self.produce = produce
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lit-linreg-read-ahead", daemon=True)
        self._LIVE.add(self)
        self.thread.start()

    @classmethod
    def _stop_all(cls) -> None:
        """At exit: a reader still running (the next epoch's, read ahead after the last) is stopped and waited
        for, as the interpreter would otherwise kill its thread inside pyarrow or torch, which aborts the process."""
        for reader in list(cls._LIVE):
            reader.close()

    def _run(self) -> None:
        items = self.produce()
        try:
            for item in items:
                if self.stop.is_set():
                    return
                self._put(item)
        except BaseException as err:  # handed to the consumer, which raises it as its own
            self._put(err)
            return
        finally:
            items.close()  # here, in this thread: what the producer holds is let go before `close()` returns
        self._put(self._DONE)

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> _ReadAhead:
        return self

    def __next__(self) -> Any:
        item = self.queue.get()
        if item is self._DONE:
            self.queue.put(item)  # asked again, it stays done
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()

    def __del__(self) -> None:
        self.stop.set()


atexit.register(_ReadAhead._stop_all)
