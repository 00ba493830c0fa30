"""A table held in memory: its splits loaded as float32 tensors, and the float64 blocks the statistics pass reads.

The rows train as float32, but the one pass of sufficient statistics sums them in float64, a block at a time
(`statistics_block` rows: a block's float64 copies stay in cache). A CSV file is read whole, in float64, and
split by a seeded permutation; its float64 training rows are kept for the pass. A Parquet table is read a block
at a time straight into its splits' float32 tensors, and the pass reads its float64 values back from those
tensors when they hold them exactly, else from the file again (`reread_blocks`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_linreg.data.rows import RowReader
from lit_linreg.data.splits import TEST, TRAIN, VAL, check_split_sizes, permuted_splits, split_of
from lit_linreg.errors import DataError

if TYPE_CHECKING:  # a table is read here only when one is given: the notebooks' tables need no pyarrow
    from lit_linreg.tables.table import Table

STATISTICS_BLOCK = 16384  # rows per update of the statistics pass, at most: a block's float64 copies stay in cache
STATISTICS_BLOCK_VALUES = 1 << 22  # values per update, at most: 32 MiB of float64 whatever the width
Rows = tuple[np.ndarray, np.ndarray]  # (x, y) float64 blocks of rows
Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux's MemAvailable); the total memory elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


FLOAT64_MEMORY_SHARE = 0.5  # of the memory available, at most, that holding the rows in float64 may add


def why_not_float64(splits: dict[str, tuple[torch.Tensor, ...]], trainer) -> str | None:
    """Why the rows held in `splits` cannot be held in float64 instead (see `InMemoryDataModule.hold_float64`), or
    None when they can. Every DDP rank answers alike: the ranks must train in one dtype."""
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    if "train" not in splits:
        return "its rows stream (--data.in_memory true would hold them)"
    if device.type == "mps":
        return "MPS has no float64"
    held = {id(t): t for split in splits.values() for t in split}.values()
    extra = sum(t.numel() * (8 - t.element_size()) for t in held)  # the float32 rows are let go first
    available = available_memory()
    fits = extra <= FLOAT64_MEMORY_SHARE * available
    if trainer is not None and trainer.world_size > 1:
        fits = trainer.strategy.reduce_boolean_decision(fits, all=True)
    if not fits:
        return f"float64 rows would take {extra:,} bytes more, over half the {available:,} available on a rank"
    return None


def statistics_block(width: int) -> int:
    """Rows per block of the statistics pass for rows of `width` values: fewer for a wide table."""
    return min(STATISTICS_BLOCK, max(1, STATISTICS_BLOCK_VALUES // width))


def memory_blocks(x: torch.Tensor, y: torch.Tensor) -> Iterator[Rows]:
    """Rows held in memory as float64 blocks: never a float64 copy of them all at once."""
    rows = statistics_block(x.shape[1] + y.shape[1])
    if x.dtype == torch.float64:  # the file's own values: views, no copy
        for start in range(0, len(x), rows):
            yield x[start : start + rows].numpy(), y[start : start + rows].numpy()
        return
    # Converted into the same two float64 arrays block after block (each block is used before the next is
    # asked for): the pass's memory is two blocks, whatever the rows, and no fresh array faults its pages in.
    # numpy converts, as numpy's BLAS then multiplies: torch's threads and BLAS's, taking turns block after
    # block, would each spin-wait on the cores the other needs.
    x, y = x.numpy(), y.numpy()
    buffers = np.empty((rows, x.shape[1])), np.empty((rows, y.shape[1]))
    for start in range(0, len(x), rows):
        n = min(rows, len(x) - start)
        for buffer, values in zip(buffers, (x, y), strict=True):
            np.copyto(buffer[:n], values[start : start + n])
        yield buffers[0][:n], buffers[1][:n]


def reblocked(blocks: Iterable[Rows], in_features: int, out_features: int) -> Iterator[Rows]:
    """`blocks` of any size cut into the statistics pass's blocks (`statistics_block` rows, the last fewer).

    They are two float64 buffers refilled block after block, each used before the next is asked for: the sums,
    which depend on where blocks start, come out as the same rows held in memory give them.
    """
    rows = statistics_block(in_features + out_features)
    buffers, n = (np.empty((rows, in_features)), np.empty((rows, out_features))), 0
    for x, y in blocks:
        start = 0
        while start < len(x):
            take = min(rows - n, len(x) - start)
            buffers[0][n : n + take], buffers[1][n : n + take] = x[start : start + take], y[start : start + take]
            n, start = n + take, start + take
            if n == rows:
                yield buffers
                n = 0
    if n:
        yield buffers[0][:n], buffers[1][:n]


def load_file(reader: RowReader, table: Table, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A test file of its own read whole, as `dtype`: (x, y). (A predict file is read a block at a time: see
    predict_rows.py.)"""
    x, y, _ = reader.read(table, with_targets=True)
    return torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)


def load_csv(
    reader: RowReader,
    table: Table,
    seed: int,
    fractions: tuple[float, float],
    rank: int,
    world_size: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[Splits, tuple[torch.Tensor, torch.Tensor]]:
    """A CSV file's splits, read whole: a seeded permutation of its rows, every world_size-th row kept.

    Returns the splits as `dtype` (x, y) and this rank's training rows as the file's float64 values.
    """
    x, y, _ = reader.read(table, with_targets=True)
    parts = permuted_splits(len(x), seed, *fractions)
    if world_size > 1:
        parts = {name: rows[rank::world_size] for name, rows in parts.items()}
    x32, y32 = torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)
    splits = {name: (x32[torch.from_numpy(index)], y32[torch.from_numpy(index)]) for name, index in parts.items()}
    train_rows = torch.from_numpy(parts["train"])
    return splits, (torch.from_numpy(x)[train_rows], torch.from_numpy(y)[train_rows])


def load_parquet(
    reader: RowReader,
    table: Table,
    seed: int,
    fractions: tuple[float, float],
    world_size: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[Splits, bool]:
    """A Parquet table's splits (this rank's row groups), read a block at a time into their `dtype` tensors.

    A row's split is a hash of its number (see splits.py), so each split's size is known from the footers
    before any row is read, less the rows dropped for a missing value: the tensors are made at that size
    and filled block after block. What the rows take is then their float32 bytes, and a block's: never a
    float64 copy of the table (a dropped row leaves its unused place at the end of its split's tensors).

    Returns the splits and whether the tensors hold the file's values exactly (float64 tensors, or float32 columns,
    small integers, category codes); if not, the statistics pass reads them from the file again (`reread_blocks`).
    """
    in_features, out_features = len(reader.feature_names), len(reader.target_names)
    codes = [split_of(seed, np.arange(g.first_row, g.first_row + g.n_rows), *fractions)
             for g in table.groups or table.row_groups()]  # fmt: skip
    capacity = np.bincount(np.concatenate(codes), minlength=3) if codes else np.zeros(3, dtype=np.int64)
    del codes
    xs = [torch.empty(int(n), in_features, dtype=dtype) for n in capacity]  # by split code: TRAIN, VAL, TEST
    ys = [torch.empty(int(n), out_features, dtype=dtype) for n in capacity]
    filled, n_rows, exact = np.zeros(3, dtype=np.int64), 0, True
    try:
        for part, columns in table.blocks(*reader.columns_to_read(table, with_targets=True)):
            x, y, rows = reader.rows(part, columns, with_targets=True, report=False)
            n_rows += len(next(iter(columns.values())))
            exact = exact and (dtype == torch.float64 or all(np.array_equal(v.astype(np.float32), v, equal_nan=True)
                                                             for v in (x, y)))  # fmt: skip
            block_codes = split_of(seed, rows, *fractions)
            for code in (TRAIN, VAL, TEST):
                chosen = block_codes == code
                start, stop = filled[code], filled[code] + int(chosen.sum())
                xs[code][start:stop] = torch.from_numpy(x[chosen])  # float64 to float32, as `.float()` rounds
                ys[code][start:stop] = torch.from_numpy(y[chosen])
                filled[code] = stop
    except DataError:
        # A block names its own first bad cell; the table read whole names the first one of the table, as
        # a CSV file's read does (the first column with an infinite number, say): the same table, the same
        # message, whatever the blocks. The error path alone reads the table whole.
        reader.read(table, with_targets=True, report=False)
        raise
    import pyarrow as pa

    pa.default_memory_pool().release_unused()  # what pyarrow's allocator kept of the blocks (see parquet.py)
    dropped = n_rows - int(filled.sum())
    if dropped:
        where = "" if world_size == 1 else " of this rank's share"
        rank_zero_info(
            f"{table.path}: dropped {dropped} of {n_rows} rows{where} with a missing value in a used column"
            " (--data.missing)"
        )
    if world_size == 1:
        check_split_sizes(int(filled.sum()), *(int(n) for n in filled), *fractions)
    names = {"train": TRAIN, "val": VAL, "test": TEST}
    return {name: (xs[code][: filled[code]], ys[code][: filled[code]]) for name, code in names.items()}, exact


def reread_blocks(reader: RowReader, table: Table, seed: int, fractions: tuple[float, float]) -> Iterator[Rows]:
    """A Parquet table's training rows as float64 blocks, read from the file again a block at a time and cut into
    the blocks the tensors in memory would give (see `reblocked`)."""
    blocks = (
        (x[train], y[train])
        for part, columns in table.blocks(*reader.columns_to_read(table, with_targets=True))
        for x, y, rows in [reader.rows(part, columns, with_targets=True, report=False)]
        for train in [split_of(seed, rows, *fractions) == TRAIN]
    )
    yield from reblocked(blocks, len(reader.feature_names), len(reader.target_names))
