"""A table's rows as the model takes them: float64 features and targets, categories as codes, missing cells handled.

`RowReader` turns the columns a `Table` reads into the (x, y) a DataModule holds: the features in the schema's
order, a categorical column as its codes (see encoding.py), a row with a missing cell dropped, refused or left
for `missing: mean` to fill (NaN), and a value float32 cannot hold refused, naming its row and column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lit_linreg.errors import ConfigError, DataError
from lit_linreg.tables.encoding import category_codes

if TYPE_CHECKING:  # a table is read here only when one is given: the notebooks' tables need no pyarrow
    from lit_linreg.tables.table import Table

MISSING = ("drop", "error", "mean")
UNKNOWN_CATEGORY = ("error", "zeros")


def check_rules(missing: str, unknown_category: str) -> None:
    """Refuse a missing-value or unknown-category rule that is not one of those known."""
    for name, value, allowed in (
        ("missing", missing, MISSING),
        ("unknown_category", unknown_category, UNKNOWN_CATEGORY),
    ):
        if value not in allowed:
            raise ConfigError(f"data.{name} must be one of {', '.join(allowed)}, got {value!r}")


class RowReader:
    """Reads the schema's columns of a table as rows of numbers.

    Args:
        schema: The columns the model takes (see encoding.py).
        missing: Rows with a missing cell in a used column: "drop", "error" or "mean" (see `TableDataModule`).
        unknown_category: A category training never saw: "error", or "zeros" (the reference level).
    """

    def __init__(self, schema: dict, missing: str, unknown_category: str) -> None:
        self.schema, self.missing, self.unknown_category = schema, missing, unknown_category
        self.feature_names, self.target_names = schema["features"], schema["targets"]

    def read(self, table: Table, with_targets: bool, keep_all_rows: bool = False, report: bool = True):
        """(x, y, rows) of a table: float64 arrays with categories as codes, and the kept rows' numbers.

        Rows with missing cells are handled by `missing`; `rows` (N,) numbers the rows kept, counted from 0 in
        the whole table, before any is dropped. x holds NaN where `missing: mean` fills a feature later. With
        `keep_all_rows` (predict), a missing feature that nothing fills is refused instead of dropped, so every
        row gets its prediction. `report`: say how many rows were dropped.
        """
        columns = table.read(*self.columns_to_read(table, with_targets))
        return self.rows(table, columns, with_targets, keep_all_rows, report)

    def columns_to_read(self, table: Table, with_targets: bool) -> tuple[list[str], list[str]]:
        """The numeric and the categorical columns to read, refusing a table that lacks one."""
        categories = self.schema["categories"]
        needed = self.feature_names + (self.target_names if with_targets else [])
        absent = [name for name in needed if name not in table.kinds]
        if absent:
            raise DataError(f"{table.path}: no column {absent[0]!r}; the columns are {', '.join(table.columns)}")
        return [name for name in needed if name not in categories], list(categories)

    def rows(self, table: Table, columns: dict, with_targets: bool, keep_all_rows: bool = False, report: bool = True):
        """`read` of columns read already (`table` is the table as seen from their first row)."""
        path = table.path
        categories = self.schema["categories"]
        needed = self.feature_names + (self.target_names if with_targets else [])
        cells = {name: _missing_cells(columns[name]) for name in needed}  # name -> (N,) bool
        # Which missing cells refuse the table, which drop their row, and which `missing: mean` fills later.
        fills = {n for n in self.feature_names if n not in categories} if self.missing == "mean" else set()
        refuse = set(needed) if self.missing == "error" else set(self.feature_names) - fills if keep_all_rows else set()
        found = [(int(np.argmax(cells[n])), i, n) for i, n in enumerate(needed) if n in refuse and cells[n].any()]
        if found:
            row, _, name = min(found)
            why = "predictions need every feature" if keep_all_rows else "--data.missing drop or mean would skip it"
            raise DataError(f"{table.where(row, name)} is empty or missing ({why})")
        n_rows = len(cells[needed[0]])
        drop = np.zeros(n_rows, dtype=bool)
        for name in needed:
            if name not in fills:
                drop |= cells[name]
        x = np.empty((n_rows, len(self.feature_names)))
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
                _check_float32(table, values, self.feature_names if name == "feature" else self.target_names)
        return x, y, table.first_row + np.flatnonzero(~drop)

    def _codes(self, table: Table, name: str, values: np.ndarray) -> np.ndarray:
        """Integer codes of a categorical column: -1 for a level training never saw (unknown_category: zeros).

        A missing cell gets code 0; its row is dropped or refused before the codes are used.
        """
        codes = category_codes(self.schema["categories"][name], values)
        if self.unknown_category == "error" and (codes == -1).any():
            row = int(np.argmax(codes == -1))
            raise DataError(
                f"{table.where(row, name)}: category {values[row]!r} was not seen in training"
                " (--data.unknown_category zeros maps it to the reference level)"
            )
        return codes


def _missing_cells(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None for v in values], dtype=bool)
    return np.isnan(values)


def _check_float32(table: Table, values: np.ndarray, names: list[str]) -> None:
    """Refuse a value that float32, the training precision, cannot hold."""
    too_large = np.abs(values) > np.finfo(np.float32).max  # NaN compares False
    if too_large.any():
        row, column = np.argwhere(too_large)[0]
        raise DataError(f"{table.where(int(row), names[column])}: {values[row, column]:g} is too large for float32")
