"""DataModules: the notebooks' toy and crop-yield tables, synthetic data, and the user's own table.

Every module here keeps its rows in memory as whole float32 tensors, moved to the training device once,
and serves them through `TensorLoader` (see loader.py). Each one knows its columns when it is built
(`schema`, `in_features`, `out_features`), so the CLI can size the model before any row is read.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_linreg.encoding import TableEncoder, default_schema, design_names, needs_encoder
from lit_linreg.errors import ConfigError, DataError
from lit_linreg.loader import TensorLoader, batches_per_epoch, mixed_seed
from lit_linreg.parquet import TEST, TRAIN, VAL, read_groups, split_of
from lit_linreg.statistics import RowPasses, SufficientStatistics, choose_method
from lit_linreg.stream import RowGroupStream
from lit_linreg.tables import Format, Table

STATISTICS_BLOCK = 16384  # rows per update of the statistics pass, at most: a block's float64 copies stay in cache
STATISTICS_BLOCK_VALUES = 1 << 22  # values per update, at most: 32 MiB of float64 whatever the width
Rows = tuple[np.ndarray, np.ndarray]  # (x, y) float64 blocks of rows
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


class InMemoryDataModule(L.LightningDataModule):
    """Base class: a regression table held in memory as float32 tensors.

    Subclasses set `feature_names` and `target_names` in `__init__` (so `in_features` and
    `out_features` are known before any data is read) and implement `load(stage)`.

    Args:
        batch_size: Rows per training batch; None trains on the whole set in one batch.
        standardize: Scale inputs and targets to zero mean, unit variance with statistics of the
            training split. The model stores them, so it still takes and returns original units.
        seed: Seed of the train/validation split and of the per-epoch shuffle.
    """

    def __init__(self, batch_size: int | None = None, standardize: bool = False, seed: int = 0) -> None:
        super().__init__()
        # Every subclass's arguments, for TensorBoard's HPARAMS tab; the schema is the model's to keep.
        self.save_hyperparameters(ignore=["schema"])
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1 (or null for full batch), got {batch_size}")
        self.batch_size = batch_size
        self.standardize = standardize
        self.seed = seed
        self.feature_names: list[str] = []
        self.target_names: list[str] = []
        self.splits: dict[str, tuple[torch.Tensor, ...]] = {}
        self._train64: tuple[torch.Tensor, torch.Tensor] | None = None  # float64 training rows, for statistics
        self.train_statistics: SufficientStatistics | None = None  # set by `setup("fit")`
        self.fill: torch.Tensor | None = None  # training means that fill missing features (missing: mean)
        self._n_train_total: int | None = None  # training rows over every rank, counted in `setup("fit")`
        self._max_train_rows: int | None = None  # the most training rows one rank holds: its batches per epoch

    @property
    def in_features(self) -> int:
        return len(self.feature_names)

    @property
    def out_features(self) -> int:
        return len(self.target_names)

    @property
    def schema(self) -> dict:
        """Names, categories and missing-value rule of the columns; the model keeps it (see encoding.py)."""
        return default_schema(self.feature_names, self.target_names)

    def load(self, stage: str) -> dict[str, tuple[torch.Tensor, ...]]:
        """Return the splits `stage` needs: "train", "val" and "test" as (x, y), "predict" as (x,)."""
        raise NotImplementedError

    def load_share(self, stage: str, rank: int, world_size: int) -> dict[str, tuple[torch.Tensor, ...]]:
        """This rank's rows of the splits `stage` needs; the union over ranks is every row, once.

        By default the whole of `load(stage)`, every `world_size`-th row kept; a module that can read or make its
        own share alone (a Parquet table, synthetic data) overrides this, so no rank ever holds every row.
        """
        splits = self.load(stage)
        if self._train64 is not None and world_size > 1:
            self._train64 = tuple(t[rank::world_size].contiguous() for t in self._train64)
        return _every_nth(splits, rank, world_size)

    def setup(self, stage: str) -> None:
        rank, world_size = self._rank()
        if not all(name in self.splits for name in STAGE_SPLITS[stage]):
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            # Moved once here: batches are then cut on the device, never copied host-to-device per step.
            loaded = self.load_share(stage, rank, world_size)
            self.splits |= {name: tuple(t.to(device) for t in split) for name, split in loaded.items()}
        if stage == "fit" and self.train_statistics is None:
            counts = self._all_ranks(len(self.splits["train"][0]))
            self._n_train_total, self._max_train_rows = sum(counts), max(counts)
            self.train_statistics = self._statistics_pass()
            self._train64 = None  # the float64 copy served the pass alone

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _all_ranks(self, count: int) -> list[int]:
        """`count` of every rank, in rank order (an all_gather under DDP)."""
        if self.trainer is None or self.trainer.world_size == 1:
            return [count]
        return self.trainer.strategy.all_gather(torch.tensor([count])).flatten().tolist()

    def _statistics_pass(self, blocks: Callable[[], Iterable[Rows]] | None = None) -> SufficientStatistics:
        """The one pass of sufficient statistics over the training rows, in float64, summed over DDP ranks.

        Each rank passes over its own training rows (see `load_share`), so the ranks' shares cover every row
        once. `blocks()` gives them as (x, y) float64 blocks: by default the file's float64 values when the
        module kept them (`_train64`), else the training tensors; a streaming module reads them from disk.
        They are encoded as the model encodes them (one-hot categories, missing values filled with the
        training means, which take one more pass first).
        """
        blocks = blocks or self._memory_blocks
        schema = self.schema
        self.fill = torch.zeros(self.in_features, dtype=torch.float64)
        encoder = TableEncoder(schema).double() if needs_encoder(schema) else None
        if encoder is not None and schema["missing"] == "mean":  # the training means of the numeric features
            numeric = torch.tensor([name not in schema["categories"] for name in schema["features"]])
            sums = np.zeros((2, self.in_features))  # NaN-skipping sums and counts
            for x, _ in blocks():
                sums += np.nansum(x, axis=0), np.sum(~np.isnan(x), axis=0)
            sums = self._sum_over_ranks(sums)
            empty = [name for name, n, num in zip(schema["features"], sums[1], numeric, strict=True) if num and not n]
            if empty:  # its fill would be a made-up 0 and its coefficient 0: a column of nothing
                raise DataError(
                    f"{getattr(self, 'path', 'the table')}: feature {', '.join(map(repr, empty))}"
                    f" {'has' if len(empty) == 1 else 'have'} no value in any training row, so --data.missing mean"
                    " has nothing to fill with; leave it out (--data.features)"
                )
            means = torch.from_numpy(np.divide(sums[0], sums[1], out=np.zeros(self.in_features), where=sums[1] > 0))
            self.fill = encoder.fill.copy_(torch.where(numeric, means, 0.0)).clone()
        width = len(design_names(schema)) + self.out_features
        n_rows = self._n_train_total or self._rows_estimate()  # the ranks must choose alike
        stats = SufficientStatistics(width - self.out_features, self.out_features, choose_method(n_rows, 1 + width))
        for x, y in blocks():
            x = encoder(torch.from_numpy(x)).numpy() if encoder is not None else x
            stats.update(x, y)
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered = self.trainer.strategy.all_gather(torch.from_numpy(stats.to_array()))  # (world_size, L)
            stats = SufficientStatistics.combine([SufficientStatistics.from_array(a) for a in gathered.cpu().numpy()])
        if stats.method == "moments":  # too wide for X'X: the reference and lr auto pass over the rows again

            def encoded() -> Iterator[Rows]:
                for x, y in blocks():
                    yield (encoder(torch.from_numpy(x)).numpy() if encoder is not None else x), y

            stats.rows = RowPasses(encoded, stats.mean, self._sum_over_ranks)
        return stats

    def _memory_blocks(self) -> Iterator[Rows]:
        """The training rows held in memory as float64 blocks: never a float64 copy of them all at once."""
        x, y = self._train64 if self._train64 is not None else (t.cpu() for t in self.splits["train"])
        rows = _statistics_block(x.shape[1] + y.shape[1])
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

    def _rows_estimate(self) -> int:
        """Training rows over all ranks, before they are counted: what decides the statistics' method."""
        return len(self.splits["train"][0]) if "train" in self.splits else 0

    def _sum_over_ranks(self, values: np.ndarray) -> np.ndarray:
        if self.trainer is None or self.trainer.world_size == 1:
            return values
        return self.trainer.strategy.all_gather(torch.from_numpy(values)).sum(0).cpu().numpy()

    @property
    def statistics(self) -> dict[str, torch.Tensor] | None:
        """What the model standardizes with: means and standard deviations of the training design and
        targets, and the fills of missing features; None when not standardizing. From `train_statistics`.
        """
        if not self.standardize or self.train_statistics is None:
            return None
        stats = self.train_statistics
        values = {"x_mean": stats.x_mean, "x_std": stats.x_std, "y_mean": stats.y_mean, "y_std": stats.y_std}
        return {name: torch.from_numpy(v) for name, v in values.items()} | {"fill": self.fill}

    def _loader(self, split: str, shuffle: bool = False, n_batches: int | None = None) -> TensorLoader:
        rank, _ = self._rank()
        tensors, batch_size = self.splits[split], self.batch_size
        return TensorLoader(
            *tensors, batch_size=batch_size, shuffle=shuffle, seed=self.seed, rank=rank, n_batches=n_batches
        )

    def train_dataloader(self) -> TensorLoader:
        # The same number of batches on every rank, whose shares may differ by a few rows (see loader.py).
        max_rows = self._max_train_rows or len(self.splits["train"][0])
        n_batches = batches_per_epoch(max_rows, self.batch_size)
        if len(self.splits["train"][0]) < n_batches:
            raise DataError(
                f"a rank holds {len(self.splits['train'][0])} training rows, fewer than the {n_batches} batches of"
                " an epoch: use fewer ranks or a larger --data.batch_size"
            )
        return self._loader("train", shuffle=self.batch_size is not None, n_batches=n_batches)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val")

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test")

    def predict_dataloader(self) -> TensorLoader:
        return self._loader("predict")


class ToyDataModule(InMemoryDataModule):
    """The notebooks' y = 2x: x = [1, 2, 3, 4], full batch, raw (unstandardized) values.

    With 4 rows there is nothing to hold out: training, validation and test all use the same rows.

    Args:
        predict_x: Inputs to predict for; the notebooks ask for f(5).
    """

    def __init__(self, predict_x: list[float] | None = None) -> None:
        super().__init__(batch_size=None, standardize=False)
        self.predict_x = [5.0] if predict_x is None else list(predict_x)
        self.feature_names, self.target_names = ["x"], ["y"]

    def load(self, stage: str) -> dict[str, tuple[torch.Tensor, ...]]:
        x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # (4, 1)
        y = 2 * x  # (4, 1)
        return {"train": (x, y), "val": (x, y), "test": (x, y), "predict": (torch.tensor(self.predict_x)[:, None],)}


# Notebook 003's table: (temperature, rainfall, humidity) -> (apples, oranges).
CROP_INPUTS = [[73, 67, 43], [91, 88, 64], [87, 134, 58], [102, 43, 37], [69, 96, 70]]
CROP_TARGETS = [[56, 70], [81, 101], [119, 133], [22, 37], [103, 119]]


class CropYieldDataModule(InMemoryDataModule):
    """Notebook 003's 5-row crop table, full batch, standardized by default.

    With 5 rows there is nothing to hold out: training, validation and test all use the same rows.

    Args:
        predict_x: Rows of (temperature, rainfall, humidity) to predict for; the 5 table rows if None.
        standardize: Scale inputs and targets with their statistics (see `InMemoryDataModule`).
    """

    def __init__(self, predict_x: list[list[float]] | None = None, standardize: bool = True) -> None:
        super().__init__(batch_size=None, standardize=standardize)
        self.predict_x = predict_x
        self.feature_names = ["temperature", "rainfall", "humidity"]
        self.target_names = ["apples", "oranges"]
        if predict_x is not None and any(len(row) != 3 for row in predict_x):
            raise ConfigError("data.predict_x rows must each hold 3 values: temperature, rainfall, humidity")

    def load(self, stage: str) -> dict[str, tuple[torch.Tensor, ...]]:
        x, y = torch.tensor(CROP_INPUTS, dtype=torch.float32), torch.tensor(CROP_TARGETS, dtype=torch.float32)
        predict = x if self.predict_x is None else torch.tensor(self.predict_x, dtype=torch.float32)
        return {"train": (x, y), "val": (x, y), "test": (x, y), "predict": (predict,)}


class SyntheticDataModule(InMemoryDataModule):
    """Rows of y = X @ W*.T + b* + noise, generated from a seed in `setup`: data for scale tests.

    X is standard normal and W*, b* are standard normal too; they are kept as `true_weight`
    (n_targets, n_features) and `true_bias` (n_targets,). The first `1 - val_fraction` of the rows
    train, the rest validate and test (the rows are i.i.d., so a contiguous split is a random one).

    Rows are made in blocks of `GENERATION_BLOCK`, each from its own seed, so any run of rows can be made
    alone: under DDP each rank makes only its share (a contiguous run of the training rows and one of the
    validation rows), and the data set is the same whatever the world size.

    Args:
        n_samples: Rows generated, training and validation together.
        n_features: Input columns.
        n_targets: Output columns.
        noise: Standard deviation of the Gaussian noise added to y.
        val_fraction: Share of the rows held out for validation and test, in [0, 1).
        batch_size: Rows per training batch.
        standardize: Scale with training statistics (X is already standard normal, so off by default).
        seed: Seed of the data, the true coefficients and the shuffle.
        relation: "linear" makes y = X @ W*.T + b* + noise; "sine" makes y = sin(X) @ W*.T + b* + noise, a known
            nonlinear target for a network other than the linear model (see nets.py). X and the noise are the
            same draws either way.
    """

    GENERATION_BLOCK = 65536

    def __init__(
        self,
        n_samples: int = 65536,
        n_features: int = 8,
        n_targets: int = 1,
        noise: float = 0.1,
        val_fraction: float = 0.1,
        batch_size: int | None = 1024,
        standardize: bool = False,
        seed: int = 0,
        relation: Literal["linear", "sine"] = "linear",
    ) -> None:
        super().__init__(batch_size=batch_size, standardize=standardize, seed=seed)
        for name, value in (("n_samples", n_samples), ("n_features", n_features), ("n_targets", n_targets)):
            if value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        if noise < 0:
            raise ConfigError(f"data.noise must be >= 0, got {noise}")
        if relation not in ("linear", "sine"):
            raise ConfigError(f"data.relation must be 'linear' or 'sine', got {relation!r}")
        _check_fraction("val_fraction", val_fraction)
        self.n_samples, self.noise, self.val_fraction = n_samples, noise, val_fraction
        self.relation = relation
        self.feature_names = [f"x{i}" for i in range(n_features)]
        self.target_names = [f"y{i}" for i in range(n_targets)]
        generator = torch.Generator().manual_seed(seed)
        self.true_weight = torch.randn(n_targets, n_features, generator=generator)
        self.true_bias = torch.randn(n_targets, generator=generator)

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `start .. stop - 1` of the data set: x (n, in_features) and y (n, out_features)."""
        x = torch.empty(stop - start, self.in_features)
        y = torch.empty(stop - start, self.out_features)
        block = self.GENERATION_BLOCK
        for first in range(start - start % block, stop, block):
            # One generator per block, seeded from the seed and the block's number: blocks are independent.
            generator = torch.Generator().manual_seed(mixed_seed(self.seed, first // block))
            n = min(block, self.n_samples - first)
            lo, hi = max(start, first), min(stop, first + n)
            whole = (lo, hi) == (first, first + n)  # made straight into x and y: no block-sized temporaries
            bx = x[lo - start : hi - start] if whole else torch.empty(n, self.in_features)
            torch.randn(n, self.in_features, generator=generator, out=bx)  # (n, in_features)
            inputs = torch.sin(bx) if self.relation == "sine" else bx  # what W* weighs
            by = y[lo - start : hi - start] if whole else torch.empty(n, self.out_features)
            torch.addmm(self.true_bias, inputs, self.true_weight.T, out=by)  # (n, out_features)
            by.add_(torch.randn(by.shape, generator=generator), alpha=self.noise)
            if not whole:
                x[lo - start : hi - start], y[lo - start : hi - start] = (
                    bx[lo - first : hi - first],
                    by[lo - first : hi - first],
                )
        return x, y

    def load(self, stage: str) -> dict[str, tuple[torch.Tensor, ...]]:
        return self.load_share(stage, 0, 1)

    def load_share(self, stage: str, rank: int, world_size: int) -> dict[str, tuple[torch.Tensor, ...]]:
        n_train, _, _ = _split_sizes(self.n_samples, self.val_fraction, 0.0)
        train = self.rows(*_share(0, n_train, rank, world_size))
        val = self.rows(*_share(n_train, self.n_samples, rank, world_size)) if n_train < self.n_samples else train
        return {"train": train, "val": val, "test": val, "predict": (val[0],)}


class TableDataModule(InMemoryDataModule):
    """The user's own table: CSV (any delimiter), TSV, gzipped either, a Parquet file or directory of them.

    Only what decides the model's size is read when the module is built: the columns, their kinds (from the
    first MiB of a CSV file, from the schema of a Parquet one) and the levels of the categorical columns. The
    rows are read in `setup`, in float64, and held as float32 tensors.

    Which rows each stage uses: `fit` trains on the rows left after `val_fraction` and `test_fraction` are
    held out (a seeded permutation) and validates on the validation rows (on the training rows when
    `val_fraction` is 0); `test` uses the `test_fraction` rows, else the file `test_path`, else the validation
    rows; `predict` uses `predict_path`, else the validation rows.

    Args:
        path: The table: a file, or a directory of Parquet files.
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
    """

    MEMORY_SHARE = 0.5  # of the memory available: more than this streams (in_memory: null)
    # What a value costs a full-batch fit in memory, measured (`make bench`, the `table` group): its float32 tensor
    # (4), the blocks being read, and the training step's standardized copies of the rows: 2.7x the float32 bytes.
    BYTES_PER_VALUE = 12

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
    ) -> None:
        super().__init__(batch_size=batch_size, standardize=standardize, seed=seed)
        if shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer must be at least 1, got {shuffle_buffer}")
        self.in_memory, self.shuffle_buffer = in_memory, shuffle_buffer
        self._groups: list | None = None  # streaming: this rank's row groups
        self._counts: np.ndarray | None = None  # streaming: this rank's rows per split (TRAIN, VAL, TEST)
        self._dropped = 0  # streaming: this rank's rows dropped for a missing value
        self._auto_streams: bool | None = None  # in_memory: null, once decided
        self._open_files: dict = {}  # streaming: each Parquet file's footer, parsed once (see `read_groups`)
        self._train_streams: list[RowGroupStream] = []  # streaming: closed at teardown (see `_close_streams`)
        self._group_splits: dict = {}  # streaming: the split code of each row of each row group read, (n,) uint8
        self._reread: Table | None = None  # in memory: the table the statistics pass reads its float64 rows from
        _check_fraction("val_fraction", val_fraction)
        _check_fraction("test_fraction", test_fraction)
        if val_fraction + test_fraction >= 1:
            raise ConfigError("data.val_fraction + data.test_fraction must be below 1: no rows would train")
        for name, value, allowed in (
            ("missing", missing, ("drop", "error", "mean")),
            ("unknown_category", unknown_category, ("error", "zeros")),
        ):
            if value not in allowed:
                raise ConfigError(f"data.{name} must be one of {', '.join(allowed)}, got {value!r}")
        self.path, self.format, self.delimiter = Path(path), format, delimiter
        self.missing, self.unknown_category = missing, unknown_category
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.test_path, self.predict_path = test_path, predict_path
        self.predict_table = None  # the predict file as written, for predictions.csv
        self._tables: dict[Path, Table] = {}
        if schema is not None:  # a trained model's columns: the training file need not exist any more
            self._schema = {**default_schema(schema["features"], schema["targets"]), **schema}
        else:
            self._schema = self._schema_from_file(targets, features, categorical or [])
        self.feature_names, self.target_names = self._schema["features"], self._schema["targets"]

    @property
    def schema(self) -> dict:
        return self._schema

    def _schema_from_file(self, targets: list[str], features: list[str] | None, categorical: list[str]) -> dict:
        if not targets:
            raise ConfigError("data.targets must name at least one column")
        table = self._table(self.path)
        kinds = table.kinds
        for name in [*targets, *(features or []), *categorical]:
            if name not in kinds:
                raise DataError(f"{self.path}: no column {name!r}; the columns are {', '.join(table.columns)}")
        for name in targets:
            if kinds[name] != "number":
                raise DataError(f"{self.path}: target column {name!r} holds text, not numbers")
        clash = [name for name in [*(features or []), *categorical] if name in targets]
        if clash:
            raise ConfigError(f"column {clash[0]!r} is a target: it cannot also be a feature")
        if features is None:
            features = [name for name in table.columns if kinds[name] == "number" and name not in targets]
        features = [*features, *[name for name in categorical if name not in features]]
        text = [name for name in features if kinds[name] == "text" and name not in categorical]
        if text:
            raise DataError(
                f"{self.path}: column {text[0]!r} holds text; list it in --data.categorical to one-hot encode it"
            )
        if not features:
            raise ConfigError(f"{self.path}: no feature columns: every numeric column is a target")
        ignored = [name for name in table.columns if name not in features and name not in targets]
        if ignored:
            why = {
                name: "text, not in --data.categorical" if kinds[name] == "text" else "not in --data.features"
                for name in ignored
            }
            rank_zero_info(f"{self.path}: ignored columns: " + "; ".join(f"{n} ({w})" for n, w in why.items()))
        # Levels come from every row of the file: a level seen only in validation still gets its column.
        levels = table.read([], categorical) if categorical else {}
        categories = {name: sorted({v for v in levels[name] if v is not None}) for name in categorical}
        for name, found in categories.items():
            if not found:
                raise DataError(f"{self.path}: categorical column {name!r} has no values")
        return {"features": features, "targets": list(targets), "categories": categories, "missing": self.missing}

    # --- streaming ----------------------------------------------------------------------------------------------
    def _streams(self, stage: str) -> bool:
        """Whether `stage` streams the training table's row groups rather than holding its rows in memory."""
        if stage == "predict" or (stage == "test" and self.test_fraction == 0 and self.test_path is not None):
            return False  # a file of its own, read whole
        table = self._table(self.path)
        if self.in_memory is None:  # decided once, by rank 0 for all: the ranks' collectives must match
            if self._auto_streams is None:
                rank, world_size = self._rank()
                n_rows = sum(g.n_rows for g in table.row_groups()) if table.format == "parquet" else 0
                n_bytes = n_rows / world_size * (self.in_features + self.out_features) * self.BYTES_PER_VALUE
                streams = bool(n_bytes > self.MEMORY_SHARE * _available_memory())
                self._auto_streams = self.trainer.strategy.broadcast(streams) if world_size > 1 else streams
            return self._auto_streams
        if not self.in_memory and table.format != "parquet":
            raise ConfigError(
                f"{self.path}: data.in_memory false streams Parquet row groups; convert the table first:"
                f" python -m lit_linreg.convert {self.path} DIR"
            )
        return not self.in_memory

    def setup(self, stage: str) -> None:
        if not self._streams(stage):
            super().setup(stage)
            if self.train_statistics is not None:  # the pass is done: later passes take the float32 rows
                self._reread = None
            return
        rank, world_size = self._rank()
        if self._groups is None:
            table = self._table(self.path)
            self._groups = table.share(rank, world_size).groups if world_size > 1 else table.row_groups()
        if stage == "fit" and self.train_statistics is None:
            self.train_statistics = self._statistics_pass(self._streamed_train_rows)  # counts the rows too
        elif self._counts is None:
            for _ in self._streamed_train_rows():
                pass
        self._max_train_rows = max(self._all_ranks(int(self._counts[TRAIN])))

    def _rows_estimate(self) -> int:
        if self._groups is None:
            return super()._rows_estimate()
        n_rows = sum(g.n_rows for g in self._table(self.path).row_groups())  # every rank's, from the footers
        return round(n_rows * (1 - self.val_fraction - self.test_fraction))

    def _streamed_train_rows(self) -> Iterator[Rows]:
        """This rank's training rows, a row group at a time, in float64; counts every split's rows on the way."""
        counts, dropped, seen = np.zeros(3, dtype=np.int64), 0, 0
        for group in self._groups:
            x, y, codes, n_dropped = self._read_group(group)
            counts += np.bincount(codes, minlength=3)
            dropped, seen = dropped + n_dropped, seen + group.n_rows
            yield x[codes == TRAIN], y[codes == TRAIN]
        self._dropped = dropped
        if self._counts is None and dropped:
            rank_zero_info(
                f"{self.path}: dropped {dropped} of {seen} rows{' of this rank' if self._rank()[1] > 1 else ''}"
                " with a missing value in a used column (--data.missing)"
            )
        self._counts = counts
        if self._rank()[1] == 1:  # the check a table read into memory gets
            _check_split_sizes(int(counts.sum()), *(int(counts[code]) for code in (TRAIN, VAL, TEST)), self)

    def _read_group(self, group) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """One row group's rows: x and y in float64, the split code of each, and how many rows were dropped."""
        x, y, rows = self._read(self._table(self.path).view([group]), with_targets=True, report=False)
        return x, y, split_of(self.seed, rows, self.val_fraction, self.test_fraction), group.n_rows - len(rows)

    def _split_rows(self, group, split: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """One row group as a stream reads it every epoch (see stream.py): `((x, y), rows)`, its columns first as
        float32, (in_features, n) and (out_features, n), and the positions of its rows of `split` among the n
        (None: all of them).

        The statistics pass has read and checked every cell already, so numeric columns of a numeric type take a
        fast path: cast to float32 by pyarrow (the same rounding as float64 then float32) and laid out columns
        first in one call. It runs in the stream's reader thread, which needs the GIL back after each call into
        pyarrow or torch, and waits for it while the training loop runs Python: a few calls a row group, rather
        than a few per column, keep it ahead of training. Categorical or text-typed columns go through `_read`.
        """
        table = self._table(self.path)
        names = [*self.feature_names, *self.target_names]
        if self._schema["categories"] or any(table.kinds.get(name) != "number" for name in names):
            x, y, codes, _ = self._read_group(group)
            keep = codes == split
            x, y = (torch.from_numpy(values[keep].T.astype(np.float32)) for values in (x, y))
            return (x, y), None
        columns = read_groups([group], names, self._open_files, use_threads=False)  # one core (see stream.py)
        if not all(pa.types.is_floating(t) for t in columns.schema.types):  # integers: exactly as float64 first
            columns = columns.cast(pa.schema([(name, pa.float64()) for name in names]), safe=False)  # as `_read`
        columns = columns.cast(pa.schema([(name, pa.float32()) for name in names])).combine_chunks()
        if columns.num_rows:  # (n, columns) laid out columns first, so that its transpose is contiguous; nulls NaN
            values = torch.from_numpy(
                np.asarray(columns.to_batches()[0].to_tensor(null_to_nan=True, row_major=False)).T
            )
        else:
            values = torch.empty(len(names), 0)
        key = (group.file, group.index)
        if key not in self._group_splits:  # a row's split is a hash of its number: the same every epoch
            rows = group.first_row + np.arange(columns.num_rows)
            self._group_splits[key] = split_of(self.seed, rows, self.val_fraction, self.test_fraction)
        chosen = self._group_splits[key] == split
        if self._dropped:  # the statistics pass found rows to drop: find them again
            used = values if self.missing != "mean" else values[self.in_features :]  # "mean": NaN features stay
            chosen &= ~np.isnan(used.numpy()).any(0)  # a missing target (any missing cell, but "mean") drops a row
        rows = None if chosen.all() else torch.from_numpy(np.flatnonzero(chosen))
        return (values[: self.in_features], values[self.in_features :]), rows

    def _stream(self, split: int, shuffle: bool = False, n_batches: int | None = None) -> RowGroupStream:
        return RowGroupStream(
            functools.partial(self._split_rows, split=split),
            self._groups,
            int(self._counts[split]),
            batch_size=self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=self._rank()[0],
            n_batches=n_batches,
            buffer_rows=self.shuffle_buffer,
        )

    def train_dataloader(self):
        if self._groups is None:
            return super().train_dataloader()
        self._close_streams()  # asked again (--trainer.reload_dataloaders_every_n_epochs): the last one's reader
        n_batches = batches_per_epoch(self._max_train_rows, self.batch_size)
        if self._counts[TRAIN] < n_batches:
            raise DataError(
                f"a rank holds {self._counts[TRAIN]} training rows, fewer than the {n_batches} batches of an epoch:"
                " use fewer ranks or a larger --data.batch_size"
            )
        self._train_streams.append(self._stream(TRAIN, shuffle=self.batch_size is not None, n_batches=n_batches))
        return self._train_streams[-1]

    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        self._close_streams()

    def _close_streams(self) -> None:
        """Stops the readers of the training streams made so far: each reads its next epoch ahead."""
        for stream in self._train_streams:
            stream.close()
        self._train_streams.clear()

    def val_dataloader(self):
        if self._groups is None:
            return super().val_dataloader()
        return self._stream(VAL if self.val_fraction else TRAIN)

    def test_dataloader(self):
        if self._groups is None or (self.test_fraction == 0 and self.test_path is not None):
            return super().test_dataloader()
        return self._stream(TEST if self.test_fraction else VAL if self.val_fraction else TRAIN)

    # --- reading rows -------------------------------------------------------------------------------------------
    def _table(self, path: Path) -> Table:
        """The `Table` of `path`, opened (its columns and kinds read) once."""
        if path not in self._tables:
            self._tables[path] = Table(path, self.format, self.delimiter)
        return self._tables[path]

    def _read(self, table: Table, with_targets: bool, keep_all_rows: bool = False, report: bool = True):
        """(x, y, rows) of a table: float64 arrays with categories as codes, and the kept rows' numbers.

        Rows with missing cells are handled by `missing`; `rows` (N,) numbers the rows kept, counted from 0 in
        the whole table, before any is dropped. x holds NaN where `missing: mean` fills a feature later. With
        `keep_all_rows` (predict), a missing feature that nothing fills is refused instead of dropped, so every
        row gets its prediction.
        """
        columns = table.read(*self._columns_to_read(table, with_targets))
        return self._rows(table, columns, with_targets, keep_all_rows, report)

    def _columns_to_read(self, table: Table, with_targets: bool) -> tuple[list[str], list[str]]:
        """The numeric and the categorical columns to read, refusing a table that lacks one."""
        categories = self._schema["categories"]
        needed = self.feature_names + (self.target_names if with_targets else [])
        absent = [name for name in needed if name not in table.kinds]
        if absent:
            raise DataError(f"{table.path}: no column {absent[0]!r}; the columns are {', '.join(table.columns)}")
        return [name for name in needed if name not in categories], list(categories)

    def _rows(self, table: Table, columns: dict, with_targets: bool, keep_all_rows: bool = False, report: bool = True):
        """`_read` of columns read already (`table` is the table as seen from their first row)."""
        path = table.path
        categories = self._schema["categories"]
        needed = self.feature_names + (self.target_names if with_targets else [])
        cells = {name: _missing_cells(columns[name]) for name in needed}  # name -> (N,) bool
        # Which missing cells refuse the table, which drop their row, and which `missing: mean` fills later.
        fills = {n for n in self.feature_names if n not in categories} if self.missing == "mean" else set()
        refuse = set(needed) if self.missing == "error" else set(self.feature_names) - fills if keep_all_rows else set()
        found = [(int(np.argmax(cells[n])), i, n) for i, n in enumerate(needed) if n in refuse and cells[n].any()]
        if found:
            row, _, name = min(found)
            why = "predictions need every feature" if keep_all_rows else "--data.missing drop or mean would skip it"
            raise DataError(f"{table._where(row, name)} is empty or missing ({why})")
        n_rows = len(cells[needed[0]])
        drop = np.zeros(n_rows, dtype=bool)
        for name in needed:
            if name not in fills:
                drop |= cells[name]
        x = np.empty((n_rows, self.in_features))
        for j, name in enumerate(self.feature_names):
            x[:, j] = self._codes(table, name, columns[name]) if name in categories else columns[name]
        y = np.stack([columns[name] for name in self.target_names], axis=1) if with_targets else None
        if drop.any():
            if report:
                where = "" if table.groups is None else " of this rank's share"
                rank_zero_info(
                    f"{path}: dropped {int(drop.sum())} of {n_rows} rows{where} with a missing value in a used"
                    " column (--data.missing)"
                )
            x, y = x[~drop], (y[~drop] if y is not None else None)
        for name, values in (("feature", x), ("target", y)):
            if values is not None:
                _check_float32(path, table, values, self.feature_names if name == "feature" else self.target_names)
        return x, y, table.first_row + np.flatnonzero(~drop)

    def _codes(self, table: Table, name: str, values: np.ndarray) -> np.ndarray:
        """Integer codes of a categorical column: -1 for a level training never saw (unknown_category: zeros).

        A missing cell gets code 0; its row is dropped or refused before the codes are used.
        """
        index = {level: code for code, level in enumerate(self._schema["categories"][name])}
        codes = np.array([index.get(v, -1) if v is not None else 0 for v in values], dtype=np.float64)
        if self.unknown_category == "error" and (codes == -1).any():
            row = int(np.argmax(codes == -1))
            raise DataError(
                f"{table._where(row, name)}: category {values[row]!r} was not seen in training"
                " (--data.unknown_category zeros maps it to the reference level)"
            )
        return codes

    def load(self, stage: str) -> dict[str, tuple[torch.Tensor, ...]]:
        return self.load_share(stage, 0, 1)

    def load_share(self, stage: str, rank: int, world_size: int) -> dict[str, tuple[torch.Tensor, ...]]:
        """This rank's rows: a Parquet table's own row groups alone; a CSV file read whole, every world_size-th kept.

        A Parquet table's rows are split by a hash of the seed and the row number (see parquet.py), so each rank
        decides its rows alone and the split is the same whatever the world size; a CSV file's by a seeded
        permutation of its rows.
        """
        if stage == "predict" and self.predict_path is not None:
            path = Path(self.predict_path)
            x, _, _ = self._read(self._table(path), with_targets=False, keep_all_rows=True)
            self.predict_table = self._table(path).read_as_written()
            return _every_nth({"predict": (torch.from_numpy(x).float(),)}, rank, world_size)
        if stage == "test" and self.test_fraction == 0 and self.test_path is not None:
            x, y, _ = self._read(self._table(Path(self.test_path)), with_targets=True)
            return _every_nth({"test": (torch.from_numpy(x).float(), torch.from_numpy(y).float())}, rank, world_size)
        table = self._table(self.path)
        if table.format == "parquet":
            splits = self._load_parquet(table.share(rank, world_size) if world_size > 1 else table, world_size)
        else:
            splits = self._load_csv(table, rank, world_size)
        if self.val_fraction == 0:
            splits["val"] = splits["train"]
        if self.test_fraction == 0:
            splits["test"] = splits["val"]
        splits["predict"] = (splits["val"][0],)
        return splits

    def _load_csv(self, table: Table, rank: int, world_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """A CSV file's splits, read whole: a seeded permutation of its rows, every world_size-th row kept."""
        x, y, _ = self._read(table, with_targets=True)
        n_train, n_val, _ = _split_sizes(len(x), self.val_fraction, self.test_fraction)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed)).numpy()
        parts = {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}
        if world_size > 1:
            parts = {name: rows[rank::world_size] for name, rows in parts.items()}
        x32, y32 = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        splits = {name: (x32[torch.from_numpy(index)], y32[torch.from_numpy(index)]) for name, index in parts.items()}
        train_rows = torch.from_numpy(parts["train"])
        self._train64 = (torch.from_numpy(x)[train_rows], torch.from_numpy(y)[train_rows])
        return splits

    def _load_parquet(self, table: Table, world_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """A Parquet table's splits (this rank's row groups), read a block at a time into their float32 tensors.

        A row's split is a hash of its number (see parquet.py), so each split's size is known from the footers
        before any row is read, less the rows dropped for a missing value: the tensors are made at that size
        and filled block after block. What the rows take is then their float32 bytes, and a block's: never a
        float64 copy of the table (a dropped row leaves its unused place at the end of its split's tensors).

        The statistics pass takes the training rows' float64 values from the float32 tensors when every value
        is a float32 number (float32 columns, small integers, category codes), and otherwise from the file
        again, a block at a time (see `_memory_blocks`).
        """
        codes = [split_of(self.seed, np.arange(g.first_row, g.first_row + g.n_rows), self.val_fraction,
                          self.test_fraction) for g in table.groups or table.row_groups()]  # fmt: skip
        capacity = np.bincount(np.concatenate(codes), minlength=3) if codes else np.zeros(3, dtype=np.int64)
        del codes
        xs = [torch.empty(int(n), self.in_features) for n in capacity]  # by split code: TRAIN, VAL, TEST
        ys = [torch.empty(int(n), self.out_features) for n in capacity]
        filled, n_rows, exact = np.zeros(3, dtype=np.int64), 0, True
        try:
            for part, columns in table.blocks(*self._columns_to_read(table, with_targets=True)):
                x, y, rows = self._rows(part, columns, with_targets=True, report=False)
                n_rows += len(next(iter(columns.values())))
                exact = exact and all(np.array_equal(v.astype(np.float32), v, equal_nan=True) for v in (x, y))
                block_codes = split_of(self.seed, rows, self.val_fraction, self.test_fraction)
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
            self._read(table, with_targets=True, report=False)
            raise
        pa.default_memory_pool().release_unused()  # what pyarrow's allocator kept of the blocks (see parquet.py)
        dropped = n_rows - int(filled.sum())
        if dropped:
            where = "" if world_size == 1 else " of this rank's share"
            rank_zero_info(
                f"{table.path}: dropped {dropped} of {n_rows} rows{where} with a missing value in a used column"
                " (--data.missing)"
            )
        if world_size == 1:
            _check_split_sizes(int(filled.sum()), *(int(n) for n in filled), self)
        self._train64 = None
        self._reread = None if exact else table
        names = {"train": TRAIN, "val": VAL, "test": TEST}
        return {name: (xs[code][: filled[code]], ys[code][: filled[code]]) for name, code in names.items()}

    def _memory_blocks(self) -> Iterator[Rows]:
        """The training rows as float64 blocks: from the float32 tensors when they hold the file's values exactly,
        else read from the file again, a block at a time, and cut into the blocks the tensors would give."""
        if self._reread is None:
            yield from super()._memory_blocks()
            return
        table = self._reread
        blocks = (
            (x[train], y[train])
            for part, columns in table.blocks(*self._columns_to_read(table, with_targets=True))
            for x, y, rows in [self._rows(part, columns, with_targets=True, report=False)]
            for train in [split_of(self.seed, rows, self.val_fraction, self.test_fraction) == TRAIN]
        )
        yield from _reblocked(blocks, self.in_features, self.out_features)


def _statistics_block(width: int) -> int:
    """Rows per block of the statistics pass for rows of `width` values: fewer for a wide table."""
    return min(STATISTICS_BLOCK, max(1, STATISTICS_BLOCK_VALUES // width))


def _reblocked(blocks: Iterable[Rows], in_features: int, out_features: int) -> Iterator[Rows]:
    """`blocks` of any size cut into the statistics pass's blocks (`_statistics_block` rows, the last fewer).

    They are two float64 buffers refilled block after block, each used before the next is asked for: the sums,
    which depend on where blocks start, come out as the same rows held in memory give them.
    """
    rows = _statistics_block(in_features + out_features)
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


def _every_nth(splits: dict[str, tuple[torch.Tensor, ...]], rank: int, world_size: int) -> dict:
    """Every world_size-th row of each split, from `rank` on: the ranks' shares cover every row once."""
    if world_size == 1:
        return splits
    return {name: tuple(t[rank::world_size].contiguous() for t in split) for name, split in splits.items()}


def _check_split_sizes(n_rows: int, n_train: int, n_val: int, n_test: int, dm: TableDataModule) -> None:
    """Refuse a hashed split that leaves no training row, or fewer than the 2 rows R² needs in a held-out split."""
    if n_train < 1 or (dm.val_fraction and n_val < 2) or (dm.test_fraction and n_test < 2):
        raise DataError(
            f"{n_rows} data rows are too few at val_fraction {dm.val_fraction} and test_fraction"
            f" {dm.test_fraction}: the split gave {n_train} training, {n_val} validation and {n_test} test rows;"
            " need at least 1 training row and 2 rows in each held-out split"
        )


def _available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux's MemAvailable); the total memory elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _missing_cells(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None for v in values], dtype=bool)
    return np.isnan(values)


def _check_float32(path: Path, table: Table, values: np.ndarray, names: list[str]) -> None:
    """Refuse a value that float32, the training precision, cannot hold."""
    too_large = np.abs(values) > np.finfo(np.float32).max  # NaN compares False
    if too_large.any():
        row, column = np.argwhere(too_large)[0]
        raise DataError(f"{table._where(int(row), names[column])}: {values[row, column]:g} is too large for float32")


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:  # also refuses nan
        raise ConfigError(f"data.{name} must be in [0, 1), got {value}")


def _share(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous run of rows `start .. stop - 1` that `rank` of `world_size` holds: equal within one row."""
    n = stop - start
    return start + rank * n // world_size, start + (rank + 1) * n // world_size


def _split_sizes(n_rows: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Training, validation and test rows of an `n_rows` table. R² needs at least 2 rows in a held-out split."""
    n_val = 0 if val_fraction == 0 else max(2, round(n_rows * val_fraction))
    n_test = 0 if test_fraction == 0 else max(2, round(n_rows * test_fraction))
    if n_rows < 2 or n_rows - n_val - n_test < 1:
        raise DataError(
            f"{n_rows} data rows are too few at val_fraction {val_fraction} and test_fraction {test_fraction}: need"
            " at least 1 training row and 2 rows in each held-out split"
        )
    return n_rows - n_val - n_test, n_val, n_test
