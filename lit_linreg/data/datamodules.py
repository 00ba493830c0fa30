"""DataModules: the notebooks' toy and crop-yield tables, synthetic data, and the user's own table.

Every module here keeps its rows in memory as whole float32 tensors (see `InMemoryDataModule`, in_memory.py),
or streams a Parquet table too large for memory (`TableDataModule`, table_datamodule.py). Each one knows its
columns when it is built (`schema`, `in_features`, `out_features`), so the CLI can size the model before any
row is read. All of them are importable from here, the path configs and saved runs name them by.
"""

from __future__ import annotations

from typing import Literal

import torch

from lit_linreg.data.in_memory import InMemoryDataModule
from lit_linreg.data.loader import mixed_seed
from lit_linreg.data.splits import check_fraction, contiguous_share, split_sizes
from lit_linreg.errors import ConfigError

__all__ = ["CropYieldDataModule", "InMemoryDataModule", "SyntheticDataModule", "ToyDataModule"]


def __getattr__(name: str):
    # `lit_linreg.datamodules.TableDataModule`, as configs of the flat layout name it, imported on first use: the
    # notebooks' tables need none of the table reader (pyarrow)
    if name == "TableDataModule":
        from lit_linreg.data.table_datamodule import TableDataModule

        return TableDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        check_fraction("val_fraction", val_fraction)
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
        n_train, _, _ = split_sizes(self.n_samples, self.val_fraction, 0.0)
        train = self.rows(*contiguous_share(0, n_train, rank, world_size))
        val = (
            self.rows(*contiguous_share(n_train, self.n_samples, rank, world_size))
            if n_train < self.n_samples
            else train
        )
        return {"train": train, "val": val, "test": val, "predict": (val[0],)}
