"""A Parquet table as row groups: each rank's share, and which rows train, validate and test.

Under DDP every rank reads only its share of a Parquet file or directory: whole row groups, contiguous in
the table's order (files sorted by name, row groups in file order), as equal in rows as whole row groups
allow. The shares cover every row group exactly once, whatever the world size. Only the files' footers are
read to decide it, on every rank alike, so the ranks agree without talking.

Which split a row belongs to is decided by a hash of the seed and its row number in the table (counted from
0, before rows with missing values are dropped): a row validates when its hash, a uniform number in [0, 1),
is below `val_fraction`, and tests when it is in [val_fraction, val_fraction + test_fraction). A rank, or a
stream reading one row group at a time, decides any row alone and in O(1) memory, and the splits are the
same whatever the world size or whether the table is streamed. The counts are `val_fraction` of the rows on
average (binomial), not exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lit_linreg.errors import DataError

TRAIN, VAL, TEST = 0, 1, 2  # split codes


@dataclass(frozen=True)
class RowGroup:
    """One row group of a Parquet table: its file, index in the file, first row (in the table) and size."""

    file: str
    index: int
    first_row: int
    n_rows: int


def row_groups(files: list[Path]) -> list[RowGroup]:
    """Every row group of `files`, in table order, from the footers alone."""
    groups, first = [], 0
    for file in files:
        try:
            metadata = pq.ParquetFile(file).metadata
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{file}: not a readable Parquet file ({str(err).strip().splitlines()[0]})") from None
        for index in range(metadata.num_row_groups):
            n = metadata.row_group(index).num_rows
            if n:
                groups.append(RowGroup(str(file), index, first, n))
                first += n
    return groups


def rank_share(groups: list[RowGroup], rank: int, world_size: int) -> list[RowGroup]:
    """The contiguous run of whole row groups that `rank` reads: a group goes to the rank its middle row falls in."""
    n_rows = sum(g.n_rows for g in groups)
    share = [
        g for g in groups if min(world_size - 1, world_size * (2 * g.first_row + g.n_rows) // (2 * n_rows)) == rank
    ]
    if not share:
        raise DataError(
            f"{Path(groups[0].file).parent if groups else 'the table'}: {len(groups)} row groups cannot give each of"
            f" {world_size} ranks one; rewrite it with smaller row groups"
            " (python -m lit_linreg.convert TABLE DIR --rows-per-group N)"
        )
    return share


def row_uniforms(seed: int, rows: np.ndarray) -> np.ndarray:
    """A uniform number in [0, 1) for each row number, from the seed: SplitMix64's finalizer, vectorized."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def split_of(seed: int, rows: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """TRAIN, VAL or TEST for each of the table's row numbers `rows` (counted from 0), (len(rows),) uint8."""
    u = row_uniforms(seed, rows)
    return np.where(u < val_fraction, VAL, np.where(u < val_fraction + test_fraction, TEST, TRAIN)).astype(np.uint8)


def read_groups(
    groups: list[RowGroup], columns: list[str], files: dict | None = None, use_threads: bool = True
) -> pa.Table:
    """The named columns of `groups`, concatenated in the order given.

    `files`, if given, keeps each file's parsed footer from call to call (a stream reads one row group at a
    time, every epoch): the file is opened again each call, so no reader keeps a row group's buffers alive.
    `use_threads`: decode the columns in pyarrow's thread pool, or in the calling thread alone.
    """
    files = {} if files is None else files

    def opened(file: str) -> pq.ParquetFile:
        if file not in files:
            files[file] = pq.ParquetFile(file).metadata
        return pq.ParquetFile(file, metadata=files[file])

    try:
        parts = [
            opened(file).read_row_groups([g.index for g in run], columns=columns, use_threads=use_threads)
            for file, run in ((file, list(run)) for file, run in groupby(groups, key=lambda g: g.file))
        ]
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{groups[0].file}: not a readable Parquet file ({str(err).strip().splitlines()[0]})") from None
    return pa.concat_tables(parts, promote_options="default")  # a column required in one file, nullable in another


def read_blocks(groups: list[RowGroup], columns: list[str], rows: int) -> Iterator[tuple[int, pa.Table]]:
    """The named columns of `groups`, at most `rows` rows at a time: `(first_row, block)` pairs, in table order.

    A row group is decoded a piece at a time, so only one block's columns are held, whatever the row groups'
    size; `first_row` is the block's first row in the table, counted from 0. Decoded in the calling thread:
    what pyarrow's allocator keeps for other threads is not given back by `release_unused`.
    """
    for file, run in groupby(groups, key=lambda g: g.file):
        run = list(run)
        first = run[0].first_row
        try:
            with pq.ParquetFile(file) as reader:
                groups_read = [g.index for g in run]
                for batch in reader.iter_batches(rows, row_groups=groups_read, columns=columns, use_threads=False):
                    yield first, pa.Table.from_batches([batch])
                    first += batch.num_rows
                    # pyarrow's allocator (mimalloc) keeps what the block's decoding freed for reuse: given back
                    # now, a table read block after block leaves about one block resident, not a few hundred MiB.
                    pa.default_memory_pool().release_unused()
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{file}: not a readable Parquet file ({str(err).strip().splitlines()[0]})") from None
