"""The user's own table as a DataModule: the pieces that read, type, split and hold or stream it, composed.

`TableDataModule` builds on `InMemoryDataModule` (in_memory.py) and puts together:
- tables.py: reading the file (CSV, TSV, Parquet), its columns and their kinds;
- columns.py: the schema, which columns are features, targets and categories;
- rows.py: the rows as numbers, missing cells and unknown categories handled;
- splits.py: which rows train, validate and test, and each rank's share;
- loading.py: the splits held in memory as float32 tensors;
- streamed_table.py: a Parquet table too large for memory, streamed a row group at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_linreg.data.in_memory import InMemoryDataModule
from lit_linreg.data.loading import Rows, load_csv, load_file, load_parquet, reread_blocks
from lit_linreg.data.predict_rows import PredictRows
from lit_linreg.data.rows import RowReader, check_rules
from lit_linreg.data.splits import TEST, TRAIN, VAL, check_fractions, every_nth, split_record, with_stand_ins
from lit_linreg.data.streamed_table import StreamedTable, too_large_for_memory
from lit_linreg.errors import ConfigError
from lit_linreg.tables.encoding import default_schema
from lit_linreg.tables.schema import table_schema
from lit_linreg.tables.storage import is_url
from lit_linreg.tables.table import Format, Table


class TableDataModule(InMemoryDataModule):
    """The user's own table: CSV (any delimiter), TSV, gzipped either, a Parquet file or directory of them.
    Long because: it composes every piece a table needs (see the module docstring), each in a few lines.

    Only what decides the model's size is read when the module is built: the columns, their kinds (from the
    first MiB of a CSV file, from the schema of a Parquet one) and the levels of the categorical columns. The
    rows are read in `setup`, in float64, and held as float32 tensors.

    Which rows each stage uses: `fit` trains on the rows left after `val_fraction` and `test_fraction` are
    held out (see splits.py) and validates on the validation rows (on the training rows when
    `val_fraction` is 0); `test` uses the `test_fraction` rows, else the file `test_path`, else the validation
    rows; `predict` uses `predict_path`, else the validation rows.

    Args:
        path: The table: a file or a directory of Parquet files, or its URL (`s3://bucket/prefix/`: tables/storage.py).
        targets: Columns to predict (numbers).
        features: Input columns; every numeric column that is not a target if None.
        categorical: Text columns to one-hot encode inside the model (added to the features).
        format: "csv", "tsv" or "parquet"; from the file's extension if None (a directory is Parquet).
        delimiter: The CSV field separator, one character; sniffed among , ; tab | if None.
        missing: Rows with an empty, null or NaN cell in a used column: "drop" them (as R's lm), "error" at the
            first one, or "mean": fill features with their training means (rows missing a target are dropped).
        unknown_category: A category at test or predict time that training never saw: "error", or "zeros"
            to map it to the reference level (all-zero one-hot columns).
        val_fraction: Share of rows held out for validation, in [0, 1).
        test_fraction: Share of rows held out for `test`, in [0, 1).
        test_path: A table with the same columns for `test`, when `test_fraction` is 0.
        predict_path: A table with the feature columns (in any order, others allowed) to predict for.
        batch_size: Rows per training batch; None for full batch.
        standardize: Scale inputs and targets with training statistics (see `InMemoryDataModule`).
        seed: Seed of the split and of the per-epoch shuffle.
        in_memory: Hold the rows in memory (true), or stream a Parquet table's row groups as the epoch goes
            (false; see stream.py). None decides: in memory unless a Parquet table's rows (this rank's share)
            would take more than `MEMORY_SHARE` of the memory available (`BYTES_PER_VALUE` bytes a value);
            rank 0 decides for every rank.
        shuffle_buffer: Rows per shuffle window when streaming, at least (whole row groups).
        schema: The columns a trained model expects; set by the CLI from `--ckpt_path`, never by hand.
        storage_options: The object store's `endpoint` and `region`; credentials come from its own environment.
    """

    MEMORY_SHARE = 0.5  # of the memory available: more than this streams (in_memory: null)
    # What a value costs a full-batch fit in memory, measured (`make bench`, the `table` group): its float32 tensor
    # (4), and at most 1.22x that again for the blocks being read and the training step's blocks (2.2x in all).
    BYTES_PER_VALUE = 9
    split = property(split_record)  # the rows' split, as a checkpoint keeps it (see splits.seen_rows)

    def __init__(
        self,
        path: str,
        targets: list[str],
        features: list[str] | None = None,
        categorical: list[str] | None = None,
        format: Format | None = None,
        delimiter: str | None = None,
        missing: Literal["drop", "error", "mean"] = "drop",
        unknown_category: Literal["error", "zeros"] = "error",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        test_path: str | None = None,
        predict_path: str | None = None,
        batch_size: int | None = 256,
        standardize: bool = True,
        seed: int = 0,
        in_memory: bool | None = None,
        shuffle_buffer: int = 262_144,
        schema: dict | None = None,
        storage_options: dict | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, standardize=standardize, seed=seed)
        if shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer must be at least 1, got {shuffle_buffer}")
        self.in_memory, self.shuffle_buffer = in_memory, shuffle_buffer
        self._streamed: StreamedTable | None = None  # streaming: this rank's row groups (see `setup`)
        self._auto_streams: bool | None = None  # in_memory: null, once decided
        self._reread: Table | None = None  # in memory: the table the statistics pass reads its float64 rows from
        check_fractions(val_fraction, test_fraction)
        check_rules(missing, unknown_category)
        self.path, self.format, self.delimiter = _location(path), format, delimiter
        self.missing, self.unknown_category = missing, unknown_category
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.test_path, self.predict_path, self.storage_options = test_path, predict_path, storage_options
        self._tables: dict[Path | str, Table] = {}
        if schema is not None:  # a trained model's columns: the training file need not exist any more
            self._schema = {**default_schema(schema["features"], schema["targets"]), **schema}
        elif not targets:
            raise ConfigError("data.targets must name at least one column")
        else:
            table = self._table(self.path)
            self._schema = table_schema(table, targets, features, categorical or [], missing, rank_zero_info)
        self.feature_names, self.target_names = self._schema["features"], self._schema["targets"]

    @property
    def schema(self) -> dict:
        return self._schema

    @property
    def _fractions(self) -> tuple[float, float]:
        return self.val_fraction, self.test_fraction

    def _reader(self) -> RowReader:
        """What reads the rows, with the rules as they are now (a test may change `missing` after building)."""
        return RowReader(self._schema, self.missing, self.unknown_category)

    def _table(self, path: Path | str) -> Table:
        """The `Table` of `path` (or URL), opened (its columns and kinds read) once."""
        if path not in self._tables:
            self._tables[path] = Table(path, self.format, self.delimiter, self.storage_options)
        return self._tables[path]

    # --- in memory or streamed ----------------------------------------------------------------------------------
    def _streams(self, stage: str) -> bool:
        """Whether `stage` streams the training table's row groups rather than holding its rows in memory."""
        if stage == "predict" and self.predict_path is not None:
            return False  # a file of its own, read a block at a time (`predict_dataloader`)
        if stage == "test" and self.test_fraction == 0 and self.test_path is not None:
            return False  # a file of its own, read whole
        table = self._table(self.path)
        if self.in_memory is None:  # decided once, by rank 0 for all: the ranks' collectives must match
            if self._auto_streams is None:
                world_size, width = self._rank()[1], self.in_features + self.out_features
                streams = too_large_for_memory(table, world_size, width * self.BYTES_PER_VALUE, self.MEMORY_SHARE)
                self._auto_streams = self.trainer.strategy.broadcast(streams) if world_size > 1 else streams
            return self._auto_streams
        if not self.in_memory and table.format != "parquet":
            raise ConfigError(
                f"{self.path}: data.in_memory false streams Parquet row groups; convert the table first:"
                f" python -m lit_linreg.tables.convert {self.path} DIR"
            )
        return not self.in_memory

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.predict_path is not None:
            if self.trainer is not None and str(self.trainer.precision).startswith("64"):  # the rows' own digits
                self.dtype = torch.float64
            return  # nothing is held: `predict_dataloader` reads the file as it goes
        if not self._streams(stage):
            super().setup(stage)
            if self.train_statistics is not None:  # the pass is done: later passes take the float32 rows
                self._reread = None
            return
        if self._streamed is None:
            rank, world_size = self._rank()
            table, reader, fractions = self._table(self.path), self._reader(), self._fractions
            self._streamed = StreamedTable(table, reader, self.seed, fractions, rank, world_size, self.shuffle_buffer)
        if stage == "fit" and self.train_statistics is None:
            self.train_statistics = self._statistics_pass(self._streamed.train_rows)  # counts the rows too
        elif self._streamed.counts is None:
            self._streamed.count()
        self._max_train_rows = max(self._all_ranks(int(self._streamed.counts[TRAIN])))

    def _rows_estimate(self) -> int:
        return super()._rows_estimate() if self._streamed is None else self._streamed.rows_estimate()

    # --- in memory ----------------------------------------------------------------------------------------------
    def load(self, stage: str) -> dict[str, tuple[torch.Tensor, ...]]:
        return self.load_share(stage, 0, 1)

    def load_share(self, stage: str, rank: int, world_size: int) -> dict[str, tuple[torch.Tensor, ...]]:
        """This rank's rows: a Parquet table's own row groups alone; a CSV file read whole, every world_size-th kept.

        A Parquet table's rows are split by a hash of the seed and the row number (see splits.py), so each rank
        decides its rows alone and the split is the same whatever the world size; a CSV file's by a seeded
        permutation of its rows.
        """
        reader = self._reader()
        if stage == "test" and self.test_fraction == 0 and self.test_path is not None:
            test = load_file(reader, self._table(self.test_path), dtype=self.dtype)
            return every_nth({"test": test}, rank, world_size)
        table = self._table(self.path)
        if table.format == "parquet":
            share = table.share(rank, world_size) if world_size > 1 else table
            splits, exact = load_parquet(reader, share, self.seed, self._fractions, world_size, self.dtype)
            self._train64, self._reread = None, None if exact else share
        else:
            splits, self._train64 = load_csv(reader, table, self.seed, self._fractions, rank, world_size, self.dtype)
        return with_stand_ins(splits, *self._fractions)

    def _memory_blocks(self) -> Iterator[Rows]:
        """The training rows as float64 blocks: the float32 tensors' if exact, else the file's (see loading.py)."""
        if self._reread is None:
            return super()._memory_blocks()
        return reread_blocks(self._reader(), self._reread, self.seed, self._fractions)

    # --- loaders: the tensors in memory, or streams of the row groups -------------------------------------------
    def train_dataloader(self):
        if self._streamed is None:
            return super().train_dataloader()
        return self._streamed.train_stream(self._max_train_rows, self.batch_size)

    def val_dataloader(self):
        if self._streamed is None:
            return super().val_dataloader()
        return self._streamed.stream(VAL, self.batch_size)

    def test_dataloader(self):
        if self._streamed is None or (self.test_fraction == 0 and self.test_path is not None):
            return super().test_dataloader()
        return self._streamed.stream(TEST, self.batch_size)

    def predict_dataloader(self):
        """The predict file's rows a block at a time, with the rows as written (see predict_rows.py); without a
        predict file, the validation rows, held or streamed as the fit had them."""
        if self.predict_path is None:
            return (
                super().predict_dataloader() if self._streamed is None else self._streamed.stream(VAL, self.batch_size)
            )
        rank, world_size = self._rank()
        table = self._table(self.predict_path)
        return PredictRows(table, self._reader(), self.dtype, self.batch_size, rank, world_size)

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if self._streamed is not None:
            self._streamed.close()


def _location(path: str | Path) -> Path | str:
    """A table's path on this machine, or its URL in an object store as given."""
    return path if is_url(path) else Path(path)
