"""The base of every DataModule here: a regression table held in memory as float32 tensors.

The rows are moved to the training device once and served through `TensorLoader` (see loader.py). A module
knows its columns when it is built (`schema`, `in_features`, `out_features`), so the CLI can size the model
before any row is read; `setup("fit")` makes the one pass of sufficient statistics over the training rows, in
float64, summed over DDP ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import lightning as L
import numpy as np
import torch

from lit_linreg.data.loader import TensorLoader, batches_per_epoch
from lit_linreg.data.loading import Rows, memory_blocks, why_not_float64
from lit_linreg.data.splits import every_nth
from lit_linreg.errors import ConfigError, DataError
from lit_linreg.statistics import RowPasses, SufficientStatistics, choose_method
from lit_linreg.tables.encoding import TableEncoder, default_schema, design_names, needs_encoder

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
        self.dtype = torch.float32  # of the rows held; float64 when the model asks (`hold_float64`)
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
        return every_nth(splits, rank, world_size)

    def setup(self, stage: str) -> None:
        rank, world_size = self._rank()
        if not all(name in self.splits for name in STAGE_SPLITS[stage]):
            self._hold(stage, rank, world_size)
        if stage == "fit" and self.train_statistics is None:
            counts = self._all_ranks(len(self.splits["train"][0]))
            self._n_train_total, self._max_train_rows = sum(counts), max(counts)
            self.train_statistics = self._statistics_pass()
            self._train64 = None  # the float64 copy served the pass alone

    def _hold(self, stage: str, rank: int, world_size: int) -> None:
        """Load this rank's splits of `stage` onto the training device as `dtype` (float64 under precision 64-true)."""
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.trainer is not None and str(self.trainer.precision).startswith("64"):  # the rows' own digits
            self.dtype = torch.float64
        self.splits |= _moved(self.load_share(stage, rank, world_size), device, self.dtype)

    def hold_float64(self) -> str | None:
        """Hold the rows in float64 from now on, loaded again; None once held, else why they cannot be.

        The model asks in its `setup`, once the statistics exist, when float32 rows cannot resolve the table it
        fits (`precondition: qr` on a condition number beyond float32's, see precondition.py). The statistics
        stay: the pass summed the rows' own float64 values already (a file's, read again here at full precision).
        """
        why_not = why_not_float64(self.splits, self.trainer)
        if why_not is not None:
            return why_not
        self.dtype = torch.float64
        self.splits.clear()  # the float32 rows go first: the float64 ones are twice their size
        self._hold("fit", *self._rank())
        self._train64 = None
        return None

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
        """The training rows held in memory as float64 blocks (see loading.py)."""
        x, y = self._train64 if self._train64 is not None else (t.cpu() for t in self.splits["train"])
        yield from memory_blocks(x, y)

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


def _moved(splits: dict[str, tuple[torch.Tensor, ...]], device: torch.device, dtype: torch.dtype) -> dict:
    """`splits` on `device` as `dtype`, moved once there (batches are then cut on the device, never copied
    host-to-device per step), each tensor once: stand-in splits share theirs."""
    held = {id(t): t for split in splits.values() for t in split}
    held = {key: t.to(device, dtype) for key, t in held.items()}
    return {name: tuple(held[id(t)] for t in split) for name, split in splits.items()}
