"""A Parquet table streamed rather than held: this rank's row groups, read a split at a time as the epoch goes.

The statistics pass reads the training rows a row group at a time, checking every cell and counting each
split's rows on the way; a `RowGroupStream` (see stream.py) then reads each row group again every epoch,
keeping the rows of its split. A row's split is a hash of its number (see splits.py), so the rows a stream
keeps are the rows the pass counted.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_linreg.data.loader import batches_per_epoch
from lit_linreg.data.loading import Rows, available_memory
from lit_linreg.data.rows import RowReader
from lit_linreg.data.splits import TEST, TRAIN, VAL, check_split_sizes, split_of, stand_in
from lit_linreg.data.stream import RowGroupStream
from lit_linreg.errors import DataError
from lit_linreg.tables.parquet import RowGroup, read_blocks, read_groups
from lit_linreg.tables.table import Table

SLICE_ROWS = 65_536
"""Rows of a row group decoded at a time by a stream; a larger group is decoded in slices."""

BLOCK_VALUES = 1 << 22
"""Values a block of a streamed full batch holds: 16 MiB in float32, whatever the table's rows."""


def too_large_for_memory(table: Table, world_size: int, row_bytes: float, share: float) -> bool:
    """Whether this rank's share of a Parquet table's rows, at `row_bytes` a row, would take more than `share` of
    the memory available (a CSV file is never streamed)."""
    n_rows = sum(g.n_rows for g in table.row_groups()) if table.format == "parquet" else 0
    return bool(n_rows / world_size * row_bytes > share * available_memory())


class StreamedTable:
    """This rank's share of a Parquet table's row groups, and the streams of its splits.

    Args:
        table: The training table.
        reader: Reads its rows (see rows.py).
        seed: Seed of the split and of the per-epoch shuffle.
        fractions: Its `val_fraction` and `test_fraction`.
        rank: This process's rank.
        world_size: The number of ranks, each streaming its own whole row groups (see parquet.py).
        shuffle_buffer: Rows per shuffle window, at least (whole row groups).
    """

    def __init__(
        self,
        table: Table,
        reader: RowReader,
        seed: int,
        fractions: tuple[float, float],
        rank: int,
        world_size: int,
        shuffle_buffer: int,
    ) -> None:
        self.table, self.reader, self.seed, self.fractions = table, reader, seed, fractions
        self.rank, self.world_size, self.shuffle_buffer = rank, world_size, shuffle_buffer
        self.groups = table.share(rank, world_size).groups if world_size > 1 else table.row_groups()
        self.counts: np.ndarray | None = None  # this rank's rows per split (TRAIN, VAL, TEST), once read
        self.dropped = 0  # this rank's rows dropped for a missing value
        self._open_files: dict = {}  # each Parquet file's footer, parsed once (see `read_groups`)
        self._train_streams: list[RowGroupStream] = []  # closed at teardown (see `close`)
        self._group_splits: dict = {}  # the split code of each row of each row group read, (n,) uint8

    def rows_estimate(self) -> int:
        """Training rows over all ranks, before they are counted: every rank's rows, from the footers."""
        n_rows = sum(g.n_rows for g in self.table.row_groups())
        val_fraction, test_fraction = self.fractions
        return round(n_rows * (1 - val_fraction - test_fraction))

    def train_rows(self) -> Iterator[Rows]:
        """This rank's training rows in float64, a block at a time; counts every split's rows on the way."""
        counts, dropped, seen = np.zeros(3, dtype=np.int64), 0, 0
        for group in self.groups:
            for x, y, codes, n_dropped in self._read_group(group):
                counts += np.bincount(codes, minlength=3)
                dropped += n_dropped
                yield x[codes == TRAIN], y[codes == TRAIN]
            seen += group.n_rows
        self.dropped = dropped
        if self.counts is None and dropped:
            rank_zero_info(
                f"{self.table.path}: dropped {dropped} of {seen} rows{' of this rank' if self.world_size > 1 else ''}"
                " with a missing value in a used column (--data.missing)"
            )
        self.counts = counts
        if self.world_size == 1:  # the check a table read into memory gets
            check_split_sizes(int(counts.sum()), *(int(counts[code]) for code in (TRAIN, VAL, TEST)), *self.fractions)

    def count(self) -> None:
        """Count each split's rows (and check every cell) without the statistics pass."""
        for _ in self.train_rows():
            pass

    def _read_group(self, group: RowGroup) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """One row group's rows a block at a time (`Table.blocks`), whatever the group's size (pyarrow writes groups
        of 1,048,576 rows): x and y in float64, the split code of each, and how many rows were dropped."""
        view = self.table.view([group])
        for part, columns in view.blocks(*self.reader.columns_to_read(view, with_targets=True)):
            x, y, rows = self.reader.rows(part, columns, with_targets=True, report=False)
            yield x, y, split_of(self.seed, rows, *self.fractions), len(next(iter(columns.values()))) - len(rows)

    def split_rows(
        self, group: RowGroup, split: int, threads: bool = False
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """One row group as a stream reads it every epoch (see stream.py): `((x, y), rows)`, its columns first as
        float32, (in_features, n) and (out_features, n), and the positions of its rows of `split` among the n
        (None: all of them). `threads`: decode in pyarrow's thread pool, for a stream whose training leaves the cores
        free while it reads (a full batch's blocks, validation); else in the reader's thread alone.

        The statistics pass has read and checked every cell already, so numeric columns of a numeric type take a
        fast path: cast to float32 by pyarrow (the same rounding as float64 then float32) and laid out columns
        first in one call. It runs in the stream's reader thread, which needs the GIL back after each call into
        pyarrow or torch, and waits for it while the training loop runs Python: a few calls a row group, rather
        than a few per column, keep it ahead of training. Categorical or text-typed columns go through `read`.
        """
        in_features = len(self.reader.feature_names)
        names = [*self.reader.feature_names, *self.reader.target_names]
        if self.reader.schema["categories"] or any(self.table.kinds.get(name) != "number" for name in names):
            kept = [(x[codes == split], y[codes == split]) for x, y, codes, _ in self._read_group(group)]
            x, y = (torch.from_numpy(np.concatenate(values).T.astype(np.float32)) for values in zip(*kept, strict=True))
            return (x, y), None
        if group.n_rows <= SLICE_ROWS:
            values = _float32_columns(read_groups([group], names, self._open_files, use_threads=threads), names)
        else:  # a large row group (pyarrow writes 1,048,576 rows) decoded a slice at a time, into one tensor: pyarrow's
            # allocator keeps what it decoded for reuse, and a whole group's worth of it grew by each group read
            values = torch.empty(len(names), group.n_rows)
            for first, part in read_blocks([group], names, SLICE_ROWS):
                start = first - group.first_row
                values[:, start : start + part.num_rows] = _float32_columns(part, names)
        key = (group.file, group.index)
        if key not in self._group_splits:  # a row's split is a hash of its number: the same every epoch
            rows = group.first_row + np.arange(values.shape[1])
            self._group_splits[key] = split_of(self.seed, rows, *self.fractions)
        chosen = self._group_splits[key] == split
        if self.dropped:  # the statistics pass found rows to drop: find them again
            used = values if self.reader.missing != "mean" else values[in_features:]  # "mean": NaN features stay
            chosen &= ~np.isnan(used.numpy()).any(0)  # a missing target (any missing cell, but "mean") drops a row
        rows = None if chosen.all() else torch.from_numpy(np.flatnonzero(chosen))
        return (values[:in_features], values[in_features:]), rows

    def stream(
        self, split: int, batch_size: int | None, shuffle: bool = False, n_batches: int | None = None
    ) -> RowGroupStream:
        """The batches of one split's rows (TRAIN, VAL or TEST), read from the row groups as the epoch goes.

        A full batch (`batch_size` None) is read in blocks of `BLOCK_VALUES` values, never whole: training (given
        `n_batches`) takes the blocks as one `StreamedBatch` a step, validation and test as batches of their own,
        whose metrics add up. A held-out split of fraction 0 is stood in for as in memory (see `splits.with_stand_ins`).
        """
        split = stand_in(split, *self.fractions)
        block_rows = max(1, BLOCK_VALUES // (len(self.reader.feature_names) + len(self.reader.target_names)))
        if batch_size is None and n_batches is None:
            batch_size = block_rows
        return RowGroupStream(
            functools.partial(self.split_rows, split=split, threads=not shuffle),
            self.groups,
            int(self.counts[split]),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=self.rank,
            n_batches=n_batches,
            buffer_rows=self.shuffle_buffer,
            block_rows=block_rows if batch_size is None else None,
        )

    def train_stream(self, max_train_rows: int, batch_size: int | None) -> RowGroupStream:
        """The training stream, cut into as many batches as the rank with the most rows needs (see loader.py)."""
        self.close()  # asked again (--trainer.reload_dataloaders_every_n_epochs): the last one's reader
        n_batches = batches_per_epoch(max_train_rows, batch_size)
        if self.counts[TRAIN] < n_batches:
            raise DataError(
                f"a rank holds {self.counts[TRAIN]} training rows, fewer than the {n_batches} batches of an epoch:"
                " use fewer ranks or a larger --data.batch_size"
            )
        self._train_streams.append(self.stream(TRAIN, batch_size, shuffle=batch_size is not None, n_batches=n_batches))
        return self._train_streams[-1]

    def close(self) -> None:
        """Stops the readers of the training streams made so far: each reads its next epoch ahead."""
        for stream in self._train_streams:
            stream.close()
        self._train_streams.clear()


def _float32_columns(columns: pa.Table, names: list[str]) -> torch.Tensor:
    """Numeric columns (n rows) as one float32 tensor laid out columns first, (len(names), n); nulls NaN."""
    if not all(pa.types.is_floating(t) for t in columns.schema.types):  # integers: exactly as float64 first
        columns = columns.cast(pa.schema([(name, pa.float64()) for name in names]), safe=False)  # as `read`
    columns = columns.cast(pa.schema([(name, pa.float32()) for name in names])).combine_chunks()
    if not columns.num_rows:
        return torch.empty(len(names), 0)
    # (n, columns) laid out columns first, so that its transpose is contiguous
    return torch.from_numpy(np.asarray(columns.to_batches()[0].to_tensor(null_to_nan=True, row_major=False)).T)
