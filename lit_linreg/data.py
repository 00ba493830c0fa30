"""DataModules: the notebooks' toy and crop-yield tables, synthetic data, and the user's own CSV file.

Every module here keeps its rows in memory as whole float32 tensors and serves them through
`TensorLoader`, which cuts batches as slices or index-gathers of those tensors. That avoids the
per-row `__getitem__` + collate of `TensorDataset` + `DataLoader`, which dominates the cost of a
linear model: on 2M x 32 rows it is the difference between a fraction of a second and ~20 s per epoch.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lit_linreg.errors import ConfigError, DataError


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


class InMemoryDataModule(L.LightningDataModule):
    """Base class: a regression table held in memory as float32 tensors.

    Subclasses set `feature_names` and `target_names` in `__init__` (so `in_features` and
    `out_features` are known before any data is read) and implement `load()`.

    Args:
        batch_size: Rows per training batch; None trains on the whole set in one batch.
        standardize: Scale inputs and targets to zero mean, unit variance with statistics of the
            training split. The model stores them, so it still takes and returns original units.
        seed: Seed of the train/validation split and of the per-epoch shuffle.
    """

    def __init__(self, batch_size: int | None = None, standardize: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()  # every subclass's arguments, for TensorBoard's HPARAMS tab and the checkpoint
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1 (or null for full batch), got {batch_size}")
        self.batch_size = batch_size
        self.standardize = standardize
        self.seed = seed
        self.feature_names: list[str] = []
        self.target_names: list[str] = []
        self.splits: dict[str, tuple[torch.Tensor, ...]] = {}

    @property
    def in_features(self) -> int:
        return len(self.feature_names)

    @property
    def out_features(self) -> int:
        return len(self.target_names)

    def load(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Return the splits: "train", "val" and "test" as (x, y), "predict" as (x,)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if self.splits:
            return
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        # Moved once here: batches are then cut on the device, never copied host-to-device per step.
        self.splits = {name: tuple(t.to(device) for t in split) for name, split in self.load().items()}

    @property
    def statistics(self) -> dict[str, torch.Tensor] | None:
        """Mean and standard deviation of the training inputs and targets, or None when not standardizing."""
        if not self.standardize:
            return None
        x, y = self.splits["train"]
        return dict(zip(("x_mean", "x_std"), _mean_std(x), strict=False)) | dict(
            zip(("y_mean", "y_std"), _mean_std(y), strict=False)
        )

    def _loader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> TensorLoader:
        loader = TensorLoader(*self.splits[split], batch_size=batch_size, shuffle=shuffle, seed=self.seed)
        if self.trainer is not None:
            loader.shard(self.trainer.global_rank, self.trainer.world_size)
        return loader

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train", shuffle=self.batch_size is not None, batch_size=self.batch_size)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", batch_size=self.batch_size)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", batch_size=self.batch_size)

    def predict_dataloader(self) -> TensorLoader:
        return self._loader("predict", batch_size=self.batch_size)


def _mean_std(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t64 = t.double()
    std = t64.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column is left unscaled
    return t64.mean(dim=0).float(), std.float()


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

    def load(self) -> dict[str, tuple[torch.Tensor, ...]]:
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

    def load(self) -> dict[str, tuple[torch.Tensor, ...]]:
        x, y = torch.tensor(CROP_INPUTS, dtype=torch.float32), torch.tensor(CROP_TARGETS, dtype=torch.float32)
        predict = x if self.predict_x is None else torch.tensor(self.predict_x, dtype=torch.float32)
        return {"train": (x, y), "val": (x, y), "test": (x, y), "predict": (predict,)}


class SyntheticDataModule(InMemoryDataModule):
    """Rows of y = X @ W*.T + b* + noise, generated from a seed in `setup`: data for scale tests.

    X is standard normal and W*, b* are standard normal too; they are kept as `true_weight`
    (n_targets, n_features) and `true_bias` (n_targets,). The first `1 - val_fraction` of the rows
    train, the rest validate and test (the rows are i.i.d., so a contiguous split is a random one).

    Args:
        n_samples: Rows generated, training and validation together.
        n_features: Input columns.
        n_targets: Output columns.
        noise: Standard deviation of the Gaussian noise added to y.
        val_fraction: Share of the rows held out for validation and test, in [0, 1).
        batch_size: Rows per training batch.
        standardize: Scale with training statistics (X is already standard normal, so off by default).
        seed: Seed of the data, the true coefficients and the shuffle.
    """

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
    ) -> None:
        super().__init__(batch_size=batch_size, standardize=standardize, seed=seed)
        for name, value in (("n_samples", n_samples), ("n_features", n_features), ("n_targets", n_targets)):
            if value < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {value}")
        if noise < 0:
            raise ConfigError(f"data.noise must be >= 0, got {noise}")
        _check_val_fraction(val_fraction)
        self.n_samples, self.noise, self.val_fraction = n_samples, noise, val_fraction
        self.feature_names = [f"x{i}" for i in range(n_features)]
        self.target_names = [f"y{i}" for i in range(n_targets)]
        generator = torch.Generator().manual_seed(seed)
        self.true_weight = torch.randn(n_targets, n_features, generator=generator)
        self.true_bias = torch.randn(n_targets, generator=generator)

    def load(self) -> dict[str, tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(self.seed + 1)
        x = torch.randn(self.n_samples, self.in_features, generator=generator)  # (N, in_features)
        y = torch.addmm(self.true_bias, x, self.true_weight.T)  # (N, out_features)
        y.add_(torch.randn(y.shape, generator=generator), alpha=self.noise)
        n_train = _n_train(self.n_samples, self.val_fraction)
        train = (x[:n_train], y[:n_train])  # views: the data is held once
        val = (x[n_train:], y[n_train:]) if n_train < self.n_samples else train
        return {"train": train, "val": val, "test": val, "predict": (val[0],)}


class CSVDataModule(InMemoryDataModule):
    """The user's own numeric table: a CSV file with a header row.

    Only the header is read when the module is built, so the sizes are known at once; the values
    are read in `setup` with numpy's C parser. Rows are split into train and validation sets by a
    seeded permutation; validation doubles as the test set.

    Args:
        path: CSV file, comma-separated, first line the column names.
        targets: Columns to predict.
        features: Input columns; every column that is not a target if None.
        val_fraction: Share of rows held out for validation, in [0, 1); 0 validates on the training rows.
        batch_size: Rows per training batch; None for full batch.
        standardize: Scale inputs and targets with training statistics (see `InMemoryDataModule`).
        seed: Seed of the split and of the per-epoch shuffle.
        predict_path: CSV with the feature columns to predict for; the validation rows if None.
    """

    def __init__(
        self,
        path: str,
        targets: list[str],
        features: list[str] | None = None,
        val_fraction: float = 0.2,
        batch_size: int | None = 256,
        standardize: bool = True,
        seed: int = 0,
        predict_path: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, standardize=standardize, seed=seed)
        _check_val_fraction(val_fraction)
        self.path, self.val_fraction, self.predict_path = Path(path), val_fraction, predict_path
        self.columns = read_header(self.path)
        if not targets:
            raise ConfigError("data.targets must name at least one column")
        features = [c for c in self.columns if c not in targets] if features is None else list(features)
        for name in [*targets, *features]:
            if name not in self.columns:
                raise DataError(f"{self.path}: no column {name!r}; the columns are {', '.join(self.columns)}")
        if not features:
            raise ConfigError("no feature columns left: every column is a target")
        self.feature_names, self.target_names = features, list(targets)

    def load(self) -> dict[str, tuple[torch.Tensor, ...]]:
        table = read_table(self.path, self.columns, self.feature_names + self.target_names)
        x, y = table[:, : self.in_features], table[:, self.in_features :]
        n_train = _n_train(len(table), self.val_fraction)
        perm = torch.randperm(len(table), generator=torch.Generator().manual_seed(self.seed))
        train = (x[perm[:n_train]], y[perm[:n_train]])
        val = (x[perm[n_train:]], y[perm[n_train:]]) if n_train < len(table) else train
        if self.predict_path is None:
            predict = val[0]
        else:
            path = Path(self.predict_path)
            predict = read_table(path, read_header(path), self.feature_names)
        return {"train": train, "val": val, "test": val, "predict": (predict,)}


def _check_val_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:  # also refuses nan
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")


def _n_train(n_rows: int, val_fraction: float) -> int:
    """Training rows of an `n_rows` table; the rest validate. R2 needs at least 2 validation rows."""
    n_val = 0 if val_fraction == 0 else max(2, round(n_rows * val_fraction))
    if n_rows < 2 or n_rows - n_val < 1:
        raise DataError(
            f"{n_rows} data rows are too few at val_fraction {val_fraction}: need at least 1 training row and"
            " 2 validation rows (validation reuses the training rows at val_fraction 0)"
        )
    return n_rows - n_val


def read_header(path: Path) -> list[str]:
    """Column names from the first line of a CSV file (UTF-8; a leading byte-order mark is ignored)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a CSV file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if not first:
        raise DataError(f"{path}: the file is empty; expected a header line of column names")
    first = first.rstrip(b"\n").split(b"\r")[0]  # numpy, which reads the rows, also ends a line at a lone \r
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: line 1 is not UTF-8 text (byte 0x{first[err.start]:02x})") from None
    if not text.strip():
        raise DataError(f"{path}: line 1 is blank; expected a header line of column names")
    columns = [c.strip() for c in next(csv.reader([text]))]
    if any(not c for c in columns):
        raise DataError(f"{path}: the header has an empty column name (column {columns.index('') + 1})")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: the header repeats the column name(s) {', '.join(map(repr, repeated))}")
    return columns


def read_table(path: Path, columns: list[str], wanted: list[str]) -> torch.Tensor:
    """Read the `wanted` columns of a CSV file as an (N, len(wanted)) float32 tensor.

    Every row must have one field per column of the header and every field must be a number; the
    `wanted` ones must also be finite in float32. Blank lines are skipped. Otherwise raises DataError
    naming the file, line and column of the first problem.
    """
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; the columns are {', '.join(columns)}")
    usecols = [columns.index(name) for name in wanted]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on a file without rows; that is reported below
            # numpy's C reader: no per-row Python. All columns are parsed so a short row is caught.
            table = np.loadtxt(
                path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2, comments=None, encoding="utf-8"
            )
    except ValueError as err:  # includes UnicodeDecodeError
        raise DataError(_explain_numpy_error(path, columns, wanted, str(err))) from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if table.size == 0 or table.shape[1] != len(columns) or not np.isfinite(table[:, usecols]).all():
        raise DataError(_explain_numpy_error(path, columns, wanted, f"numpy read a {table.shape} table"))
    return torch.from_numpy(np.ascontiguousarray(table[:, usecols]))


def _explain_numpy_error(path: Path, columns: list[str], wanted: list[str], message: str) -> str:
    """The first problem of a CSV file that `read_table` refused, as one line naming its line and column.

    numpy's row numbers skip blank lines only in some of its messages, so the file is scanned again
    here, in Python, with numpy's rules: this runs only on the error path, where speed does not matter.
    Problems of form (field count, not a number, not UTF-8) win over non-finite values; `message`,
    numpy's own, is the fallback.
    """
    wanted_at = {columns.index(name) for name in wanted}
    non_finite, n_rows, lineno = None, 0, 0
    with open(path, "rb") as f, np.errstate(over="ignore"):
        for raw in f:
            body = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")
            for line in body.split(b"\r"):  # a lone \r ends a line too, as in numpy
                lineno += 1
                if lineno == 1 or not line:  # the header; numpy skips empty lines
                    continue
                n_rows += 1
                try:
                    fields = line.decode("utf-8").split(",")
                except UnicodeDecodeError as err:
                    return f"{path}: line {lineno} is not UTF-8 text (byte 0x{line[err.start]:02x})"
                if len(fields) != len(columns):
                    return f"{path}: line {lineno} has {len(fields)} fields, the header names {len(columns)}"
                for i, field in enumerate(fields):
                    text = field.strip()
                    where = f"{path}: line {lineno}, column {columns[i]!r}"
                    if not text:
                        return f"{where} is empty"
                    try:
                        if not text.isascii() or "_" in text:  # numpy's rules: float() without these extras
                            raise ValueError
                        value = float(text)
                    except ValueError:
                        return f"{where}: {field!r} is not a number"
                    if non_finite is None and i in wanted_at and not np.isfinite(np.float32(value)):
                        what = "is not a finite number" if not math.isfinite(value) else "is too large for float32"
                        non_finite = f"{where}: {text!r} {what}"
    if non_finite:
        return non_finite
    if n_rows == 0:
        return f"{path}: no data rows below the header"
    return f"{path}: {message.strip().splitlines()[0]}"
