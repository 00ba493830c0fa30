"""The rows of a predict file, read a block at a time: as numbers for the model, and as written for predictions.csv.

Predicting needs no statistics and no shuffle, and each row's prediction is its own: a file is read in blocks of
a Parquet table's rows (a CSV file is one block), each block's batches are predicted and written out, and the
block is let go before the next is read. What a predict run holds does not grow with the file's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lit_linreg.data.rows import RowReader
from lit_linreg.tables.table import Table

BLOCK_ROWS = 65_536
"""Rows of a Parquet predict file read at a time: 8 MiB of float32 for 32 features, whatever the file's size."""


class PredictRows:
    """An iterable of predict batches `(x, written)`: x (B, in_features) as `dtype`, and the same B rows of the file
    as written (a `pyarrow.Table` of every column: text stays text, CSV numbers the digits in the file).

    Args:
        table: The predict file.
        reader: Reads its feature columns as numbers (see rows.py); every row is kept.
        dtype: The rows' dtype: float32, or float64 under `--trainer.precision 64-true`.
        batch_size: Rows per batch; None for one batch a block.
        rank: This process's rank: it predicts every `world_size`-th row of the file, from row `rank` on.
        world_size: The number of ranks.
        block_rows: Rows read at a time; `BLOCK_ROWS` if None.
    """

    def __init__(
        self,
        table: Table,
        reader: RowReader,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        block_rows: int | None = None,
    ) -> None:
        self.table, self.reader, self.dtype, self.batch_size = table, reader, dtype, batch_size
        self.rank, self.world_size, self.block_rows = rank, world_size, block_rows or BLOCK_ROWS
        self.columns = reader.columns_to_read(table, with_targets=False)  # refuses a file without a feature

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        for part, columns, written in self.table.written_blocks(*self.columns, rows=self.block_rows):
            x, _, rows = self.reader.rows(part, columns, with_targets=False, keep_all_rows=True)
            if self.world_size > 1:  # every row is kept (predict refuses rather than drops): rows number them all
                mine = np.flatnonzero(rows % self.world_size == self.rank)
                x, written = x[mine], written.take(mine)
            x = torch.from_numpy(x).to(self.dtype)  # (n, in_features)
            step = self.batch_size or max(len(x), 1)
            for start in range(0, len(x), step):
                yield x[start : start + step], written.slice(start, step)
            del x, written, columns  # before the next block is read
