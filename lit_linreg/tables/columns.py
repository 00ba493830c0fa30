"""What a table's columns are: numbers or text, and which of them the model takes as features and targets.

A column's kind comes from its type as pyarrow reads it: integer, float, decimal and all-null columns are
numbers, everything else (dates included) is text. A CSV column pyarrow reads as text is put to a vote of its
first cells: mostly numbers, it is a column of numbers with a bad cell, which reading refuses by row and column.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from lit_linreg.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow is imported by the functions that read columns: a toy fit names its prediction columns here too.

# A number as a person writes one in a table: what the text/number vote counts (pyarrow does the parsing).
_NUMBER = r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)\s*$"


def kind_of(dtype: pa.DataType) -> str:
    """'number' for integer, float, decimal and all-null columns; 'text' for everything else (dates included)."""
    import pyarrow as pa

    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_null(dtype):
        return "number"
    return "text"


@functools.cache
def _null_spellings() -> pa.Array:
    """Blank and pyarrow's null spellings. Made on first use: `pa.array` imports pandas where it is installed,
    about 0.25 s of every run's start-up."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    return pa.array(["", *pcsv.ConvertOptions().null_values])


def mostly_numbers(column: pa.Array) -> bool:
    """Whether most non-empty cells of a text column are numbers: then a stray word is a bad cell, not text."""
    import pyarrow as pa
    import pyarrow.compute as pc

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
