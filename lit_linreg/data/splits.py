"""Which rows train, validate and test, and which of them each rank holds.

A table read whole (a CSV file) is split by a seeded permutation of its rows: `split_sizes` gives each split's
size, exact. A Parquet table, which a rank reads in shares and a stream reads a row group at a time, is split by
a hash of the seed and each row's number in the table (counted from 0, before rows with missing values are
dropped): a row validates when its hash, a uniform number in [0, 1), is below `val_fraction`, and tests when it
is in [val_fraction, val_fraction + test_fraction). A rank, or a stream, decides any row alone and in O(1)
memory, and the splits are the same whatever the world size or whether the table is streamed. The counts are
`val_fraction` of the rows on average (binomial), not exactly.

Under DDP a rank keeps every world_size-th row of a split it read whole (`every_nth`), or makes a contiguous run
of rows alone (`contiguous_share`, synthetic data).

A checkpoint keeps the split its fit drew (`TableDataModule.split`): `seen_rows` says why a later `test` or
`validate` would score rows that fit trained or validated on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch

from lit_linreg.errors import ConfigError, DataError

TRAIN, VAL, TEST = 0, 1, 2  # split codes


def check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:  # also refuses nan
        raise ConfigError(f"data.{name} must be in [0, 1), got {value}")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Refuse held-out shares outside [0, 1), or together leaving no row to train on."""
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ConfigError("data.val_fraction + data.test_fraction must be below 1: no rows would train")


def split_sizes(n_rows: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Training, validation and test rows of an `n_rows` table. R² needs at least 2 rows in a held-out split."""
    n_val = 0 if val_fraction == 0 else max(2, round(n_rows * val_fraction))
    n_test = 0 if test_fraction == 0 else max(2, round(n_rows * test_fraction))
    if n_rows < 2 or n_rows - n_val - n_test < 1:
        raise DataError(
            f"{n_rows} data rows are too few at val_fraction {val_fraction} and test_fraction {test_fraction}: need"
            " at least 1 training row and 2 rows in each held-out split"
        )
    return n_rows - n_val - n_test, n_val, n_test


def check_split_sizes(
    n_rows: int, n_train: int, n_val: int, n_test: int, val_fraction: float, test_fraction: float
) -> None:
    """Refuse a hashed split that leaves no training row, or fewer than the 2 rows R² needs in a held-out split."""
    if n_train < 1 or (val_fraction and n_val < 2) or (test_fraction and n_test < 2):
        raise DataError(
            f"{n_rows} data rows are too few at val_fraction {val_fraction} and test_fraction"
            f" {test_fraction}: the split gave {n_train} training, {n_val} validation and {n_test} test rows;"
            " need at least 1 training row and 2 rows in each held-out split"
        )


def permuted_splits(n_rows: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """The row indices of each split of a table read whole: a seeded permutation cut at `split_sizes`."""
    n_train, n_val, _ = split_sizes(n_rows, val_fraction, test_fraction)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed)).numpy()
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


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


def with_stand_ins(splits: dict, val_fraction: float, test_fraction: float) -> dict:
    """`splits` with what a zero fraction leaves out stood in for: validation by the training rows, test by the
    validation rows; and predict by the validation rows' inputs."""
    if val_fraction == 0:
        splits["val"] = splits["train"]
    if test_fraction == 0:
        splits["test"] = splits["val"]
    splits["predict"] = (splits["val"][0],)
    return splits


def stand_in(code: int, val_fraction: float, test_fraction: float) -> int:
    """The split code whose rows split `code` takes, as `with_stand_ins` gives them: itself, or for a held-out
    split of fraction 0, the validation rows (test) or the training rows (validation)."""
    if code == TEST and test_fraction == 0:
        code = VAL
    if code == VAL and val_fraction == 0:
        code = TRAIN
    return code


def every_nth(splits: dict[str, tuple[torch.Tensor, ...]], rank: int, world_size: int) -> dict:
    """Every world_size-th row of each split, from `rank` on: the ranks' shares cover every row once."""
    if world_size == 1:
        return splits
    return {name: tuple(t[rank::world_size].contiguous() for t in split) for name, split in splits.items()}


def contiguous_share(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous run of rows `start .. stop - 1` that `rank` of `world_size` holds: equal within one row."""
    n = stop - start
    return start + rank * n // world_size, start + (rank + 1) * n // world_size


DRAWN_BY = ("seed", "val_fraction", "test_fraction", "missing")  # what decides, with the table, which rows go where


def split_record(datamodule) -> dict:
    """Which rows each split of a `TableDataModule` holds, as a checkpoint keeps it: `table` (the real path, or the
    URL), its `DRAWN_BY` settings, and `test_table`, the separate table `test` reads (`test_path`), or None."""
    test_path = datamodule.test_path if datamodule.test_fraction == 0 else None
    drawn = {key: getattr(datamodule, key) for key in DRAWN_BY}
    return {"table": _real_path(datamodule.path), **drawn, "test_table": test_path and _real_path(test_path)}


def seen_rows(fit: Mapping, now: Mapping, stage: str) -> str | None:
    """Why the rows `stage` ("test" or "validate") would score include rows the fit trained or validated on; None
    when they do not, or cannot have (rows of another table).

    `fit` and `now` are split records (`TableDataModule.split`): `table` (its real path or URL), `content`
    ([bytes, modification time] or None), the `DRAWN_BY` settings, and `test_table`, the separate table `test`
    reads (`--data.test_path`), or None. The fit's own held-out rows are those the same table, unchanged, split
    the same way gives: test its test rows, validate its validation rows.
    """
    table = fit.get("table")
    separate = "on a separate table with --data.test_path"
    if stage == "test" and now.get("test_table") is not None:
        if now["test_table"] != table:
            return None
        return f"--data.test_path {table} is the table the fit drew its training and validation rows from"
    if now.get("table") != table:
        return None
    if fit.get("content") and now.get("content") and list(fit["content"]) != list(now["content"]):
        return (
            f"{table} changed since the fit (its size or modification time), so which of its rows the fit held out"
            f" is not known: test {separate}, or fit again"
        )
    if stage == "test" and not fit.get("test_fraction"):
        return (
            f"the fit held out no test rows (--data.test_fraction 0): every row of {table} trained or validated it;"
            f" hold rows out with --data.test_fraction at fit time, or test {separate}"
        )
    if stage == "validate" and not fit.get("val_fraction"):
        return (
            "the fit held out no validation rows (--data.val_fraction 0): its validation rows were its training"
            " rows; hold rows out with --data.val_fraction at fit time"
        )
    differ = [key for key in DRAWN_BY if fit.get(key) != now.get(key)]
    if differ:
        ours, theirs = (", ".join(f"{key} {split.get(key)}" for key in differ) for split in (now, fit))
        flags = " ".join(f"--data.{key} {fit.get(key)}" for key in differ)
        rows, other = ("trained or validated on", f", or {separate}") if stage == "test" else ("trained on", "")
        return (
            f"this {stage} splits {table} with {ours}, the fit split it with {theirs}: its {stage} rows include rows"
            f" the fit {rows}; {stage} with the fit's split ({flags}){other}"
        )
    return None


def _real_path(path) -> str:
    """A file's or directory's real path, as the checkpoint's stamp names it; a URL, or a missing path, as given."""
    return os.path.realpath(path) if os.path.exists(path) else str(path)
