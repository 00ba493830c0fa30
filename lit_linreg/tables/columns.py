"""What a table's columns are: numbers or text, and which of them the model takes as features and targets.

A column's kind comes from its type as pyarrow reads it: integer, float, decimal and all-null columns are
numbers, everything else (dates included) is text. A CSV column pyarrow reads as text is put to a vote of its
first cells: mostly numbers, it is a column of numbers with a bad cell, which reading refuses by row and column.

The schema (see encoding.py) names the targets, the features in the order the model takes them, and the levels
of the categorical columns; `table_schema` builds it from a table, refusing what cannot train (a missing
column, a text target, a text feature not listed as categorical) and noting the columns it leaves out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from lit_linreg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from lit_linreg.tables.table import Table

# A number as a person writes one in a table: what the text/number vote counts (pyarrow does the parsing).
_NUMBER = r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)\s*$"


def kind_of(dtype: pa.DataType) -> str:
    """'number' for integer, float, decimal and all-null columns; 'text' for everything else (dates included)."""
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_null(dtype):
        return "number"
    return "text"


@functools.cache
def _null_spellings() -> pa.Array:
    """Blank and pyarrow's null spellings. Made on first use: `pa.array` imports pandas where it is installed,
    about 0.25 s of every run's start-up."""
    return pa.array(["", *pcsv.ConvertOptions().null_values])


def mostly_numbers(column: pa.Array) -> bool:
    """Whether most non-empty cells of a text column are numbers: then a stray word is a bad cell, not text."""
    if pa.types.is_binary(column.type):  # bytes that are not UTF-8: the vote counts the cells that are
        column = pa.array([v.decode("utf-8", "replace") if v is not None else None for v in column.to_pylist()])
    present = pc.drop_null(column)
    # Blank cells and pyarrow's null spellings (NA, null, N/A, ...) are missing values, not words: they do not vote.
    trimmed = pc.utf8_trim_whitespace(present)
    present = present.filter(pc.invert(pc.is_in(trimmed, value_set=_null_spellings())))
    if len(present) == 0:
        return True
    numbers = pc.sum(pc.match_substring_regex(pc.utf8_lower(present), _NUMBER)).as_py() or 0
    return numbers > len(present) / 2


def check_names(path: Path, columns: list[str]) -> None:
    """Refuse a header with an empty or a repeated column name."""
    stripped = [c.strip() for c in columns]
    if any(not c for c in stripped):
        raise DataError(f"{path}: the header has an empty column name (column {stripped.index('') + 1})")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: the header repeats the column name(s) {', '.join(map(repr, repeated))}")


def table_schema(
    table: Table,
    targets: list[str],
    features: list[str] | None,
    categorical: list[str],
    missing: str,
    note: Callable[[str], None],
) -> dict:
    """The schema of `table`'s columns (see encoding.py), the categories' levels read from every row.

    Args:
        table: The training table.
        targets: Columns to predict (numbers).
        features: Input columns; every numeric column that is not a target if None.
        categorical: Text columns to one-hot encode (added to the features).
        missing: The missing-value rule the schema records.
        note: Where the one line naming the ignored columns goes.
    """
    kinds = table.kinds
    for name in [*targets, *(features or []), *categorical]:
        if name not in kinds:
            raise DataError(f"{table.path}: no column {name!r}; the columns are {', '.join(table.columns)}")
    for name in targets:
        if kinds[name] != "number":
            raise DataError(f"{table.path}: target column {name!r} holds text, not numbers")
    clash = [name for name in [*(features or []), *categorical] if name in targets]
    if clash:
        raise ConfigError(f"column {clash[0]!r} is a target: it cannot also be a feature")
    if features is None:
        features = [name for name in table.columns if kinds[name] == "number" and name not in targets]
    features = [*features, *[name for name in categorical if name not in features]]
    text = [name for name in features if kinds[name] == "text" and name not in categorical]
    if text:
        raise DataError(
            f"{table.path}: column {text[0]!r} holds text; list it in --data.categorical to one-hot encode it"
        )
    if not features:
        raise ConfigError(f"{table.path}: no feature columns: every numeric column is a target")
    ignored = [name for name in table.columns if name not in features and name not in targets]
    if ignored:
        why = {
            name: "text, not in --data.categorical" if kinds[name] == "text" else "not in --data.features"
            for name in ignored
        }
        note(f"{table.path}: ignored columns: " + "; ".join(f"{n} ({w})" for n, w in why.items()))
    # Levels come from every row of the file: a level seen only in validation still gets its column.
    levels = table.read([], categorical) if categorical else {}
    categories = {name: sorted({v for v in levels[name] if v is not None}) for name in categorical}
    for name, found in categories.items():
        if not found:
            raise DataError(f"{table.path}: categorical column {name!r} has no values")
    return {"features": features, "targets": list(targets), "categories": categories, "missing": missing}


def prediction_columns(targets: list[str], taken: set[str] | list[str]) -> list[str]:
    """`predicted_<target>` for each target, with more underscores in front while a name is taken.

    The one naming rule of predictions.csv (`taken`: the columns it repeats) and of `serve` and `export` (the
    model's features).
    """
    taken, names = set(taken), []
    for target in targets:
        name = f"predicted_{target}"
        while name in taken:
            name = "_" + name
        taken.add(name)
        names.append(name)
    return names
