"""Reading a user's table: CSV (any one-character delimiter), TSV, either gzipped, Parquet files and directories.

pyarrow does the reading: its C++ CSV reader is multi-threaded, infers types, knows nulls and quoting, and reads
only the columns asked for; its Parquet reader does the same for Parquet files and directories. This module
decides which columns are numbers and which are text, turns what pyarrow refuses into one line naming the
file, row and column, and hands back float64 numpy columns (NaN where a cell is missing).

Rows of a CSV file are counted as pyarrow counts them: the header is row 1 and blank lines are skipped, so in
a file without blank lines or line breaks inside quoted fields, row N is line N. Rows of a Parquet table are
counted from 1.
"""

from __future__ import annotations

import copy
import csv
import functools
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from lit_linreg.errors import DataError

Format = Literal["csv", "tsv", "parquet"]
FORMATS = ("csv", "tsv", "parquet")
DELIMITERS = ",;\t|"  # what sniffing chooses among; --data.delimiter takes any one character
SAMPLE_BYTES = 1 << 20  # the first MiB decides the delimiter and which columns are text
BLOCK_ROWS = 16384  # rows of a Parquet table read at a time (`Table.blocks`): 4 MiB of float64 for 33 columns

# A number as a person writes one in a table: what the text/number vote counts (pyarrow does the parsing).
_NUMBER = r"^\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|infinity|nan)\s*$"


def table_format(path: Path, format: Format | None = None) -> Format:
    """The format of `path`: `format` if given, else from its extension (after `.gz`); a directory is Parquet."""
    if format is not None:
        if format not in FORMATS:
            raise DataError(f"data.format must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    if path.is_dir():
        return "parquet"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] in ([".gz"], [".bz2"]):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in (".parquet", ".pq"):
        return "parquet"
    return "tsv" if last in (".tsv", ".tab") else "csv"


def check_readable(path: Path) -> None:
    """Refuse, in one line, a path that is missing, unreadable, or not a regular file or directory.

    A FIFO, a device or a socket could block forever or never end: only regular files (and directories of
    Parquet files) are read.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(f"{path}: not a regular file (a pipe, device or socket); give a file or a directory")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read: permission denied")


class Table:
    """A user's table, known by its columns and their kinds before any row is read in full.

    Args:
        path: A CSV/TSV file (optionally `.gz`), a Parquet file, or a directory of Parquet files.
        format: "csv", "tsv" or "parquet"; chosen from the extension if None.
        delimiter: One character separating CSV fields; sniffed from the first lines if None.
    """

    def __init__(self, path: str | Path, format: Format | None = None, delimiter: str | None = None) -> None:
        self.path = Path(path)
        check_readable(self.path)
        self.format = table_format(self.path, format)
        if self.format != "parquet" and self.path.is_dir():
            raise DataError(f"{self.path}: is a directory; a directory is read as Parquet (--data.format parquet)")
        if delimiter is not None and len(delimiter) != 1:
            raise DataError(f"data.delimiter must be one character, got {delimiter!r}")
        if self.format == "parquet":
            self.delimiter = None
            self.schema = _parquet_schema(self.path)
            self.kinds = {f.name: _kind(f.type) for f in self.schema}
        else:
            sample = _sample(self.path)
            self.delimiter = delimiter or ("\t" if self.format == "tsv" else sniff_delimiter(sample))
            self.schema, self.kinds = self._csv_kinds()
        self.columns = list(self.kinds)
        self.groups = None  # the row groups this view reads (see `share`); None: every row
        self.first_row = 0  # the table's row number of this view's first row
        if self.format == "parquet":
            _check_names(self.path, self.schema.names)

    def share(self, rank: int, world_size: int) -> Table:
        """This rank's share of a Parquet table: a view that reads only its own whole row groups (see parquet.py)."""
        from lit_linreg import parquet

        return self.view(parquet.rank_share(self.row_groups(), rank, world_size))

    def row_groups(self) -> list:
        """Every row group of a Parquet table, in the table's order, from the files' footers (see parquet.py)."""
        from lit_linreg import parquet

        return parquet.row_groups(_parquet_files(self.path))

    def view(self, groups: list) -> Table:
        """The same table, reading only `groups`: contiguous row groups, in the table's order."""
        view = copy.copy(self)
        view.groups, view.first_row = list(groups), groups[0].first_row
        return view

    # --- the CSV side ---------------------------------------------------------------------------------------------
    def _parse_options(self, handler=None) -> pcsv.ParseOptions:
        return pcsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True, invalid_row_handler=handler)

    def _csv_kinds(self) -> tuple[pa.Schema, dict[str, str]]:
        """Column kinds from the first block: pyarrow's inference, then a vote for columns it calls text."""
        try:
            reader = pcsv.open_csv(
                self.path,
                read_options=pcsv.ReadOptions(block_size=SAMPLE_BYTES, use_threads=False),
                parse_options=self._parse_options(),
            )
            first = reader.read_next_batch()
        except StopIteration:
            first = None
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(self._explain(err)) from None
        try:
            names = reader.schema.names
        except UnicodeDecodeError as err:
            raise DataError(f"{self.path}: the header is not UTF-8 text (byte 0x{err.object[err.start]:02x})") from None
        _check_names(self.path, names)
        if first is None or first.num_rows == 0:
            raise DataError(f"{self.path}: no data rows below the header")
        kinds = {}
        for field, column in zip(reader.schema, first.columns, strict=True):
            kind = _kind(field.type)
            if kind == "text" and (pa.types.is_string(field.type) or pa.types.is_binary(field.type)):
                kind = "number" if _mostly_numbers(column) else "text"
            kinds[field.name] = kind
        return reader.schema, kinds

    def _explain(self, err: Exception) -> str:
        """One line for what pyarrow refused while parsing CSV text (not a value's conversion)."""
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, OSError) and not isinstance(err, pa.ArrowException):
            return f"{self.path}: cannot read: {err.strerror or err}"
        if "Empty CSV file" in message:
            return f"{self.path}: the file is empty; expected a header line of column names"
        if "gzip" in message.lower() or "decompress" in message.lower():
            return f"{self.path}: not a readable gzip file ({message})"
        bad = self._first_bad_row()
        if bad is not None:
            number, expected, actual = bad
            return f"{self.path}: row {number} has {actual} fields, the header names {expected}"
        return f"{self.path}: {message.removeprefix('CSV parse error: ')}"

    def _first_bad_row(self) -> tuple[int, int, int] | None:
        """(row, expected, actual) of the first row with the wrong number of fields, read single-threaded.

        Only the single-threaded reader knows row numbers, so this runs on the error path alone.
        """
        found = []

        def handler(row) -> str:
            found.append((row.number, row.expected_columns, row.actual_columns))
            return "error"

        try:
            pcsv.read_csv(
                self.path,
                read_options=pcsv.ReadOptions(use_threads=False),
                parse_options=self._parse_options(handler),
            )
        except (pa.ArrowInvalid, OSError):  # the handler saw the bad row first, if there is one
            pass
        return found[0] if found else None

    # --- reading --------------------------------------------------------------------------------------------------
    def read(self, numeric: list[str], text: list[str] = ()) -> dict[str, np.ndarray]:
        """The named columns: float64 arrays for `numeric` (NaN where missing), object arrays for `text` (None).

        Raises DataError naming the row and column of a cell that is not a number, or is infinite.
        """
        return self._columns(self._read_arrow(numeric, text), numeric, text)

    def blocks(self, numeric: list[str], text: list[str] = (), rows: int = BLOCK_ROWS) -> Iterator[tuple[Table, dict]]:
        """The named columns as `read` gives them, at most `rows` rows at a time: `(part, columns)` pairs.

        `part` is this table as seen from the block's first row, so `part._where(row, name)` names the block's
        row `row` as the whole table counts it. A Parquet table is read block by block (a row group decoded a
        piece at a time), so what a block costs is freed before the next is read; a CSV file is one block.
        """
        if self.format != "parquet":
            yield self, self.read(numeric, text)
            return
        from lit_linreg.parquet import read_blocks

        columns = list(dict.fromkeys([*numeric, *text]))
        for first_row, table in read_blocks(self.groups or self.row_groups(), columns, rows):
            part = copy.copy(self)
            part.first_row = first_row
            yield part, part._columns(part._parquet_types(table, numeric, text), numeric, text)

    def _columns(self, table: pa.Table, numeric: list[str], text: list[str]) -> dict[str, np.ndarray]:
        """`read`'s arrays of an arrow table of float64 and string columns, refusing an infinite number."""
        out: dict[str, np.ndarray] = {}
        for name in numeric:
            values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            infinite = np.isinf(values)
            if infinite.any():
                row = int(np.argmax(infinite))
                raise DataError(f"{self._where(row, name)}: {values[row]} is not a finite number")
            out[name] = values
        for name in text:
            out[name] = np.asarray(table.column(name).to_pylist(), dtype=object)
        return out

    def read_as_written(self) -> pa.Table:
        """Every column as the file holds it: text stays text and CSV numbers stay the digits written."""
        if self.format == "parquet":
            return self._read_arrow(self.columns, [], as_written=True)
        return self._read_arrow([], self.columns, as_written=True)

    def _read_arrow(self, numeric: list[str], text: list[str], as_written: bool = False) -> pa.Table:
        """The columns as arrow arrays: `numeric` as float64, `text` as strings, empty cells as nulls.

        With `as_written`, nothing is converted: every CSV cell comes back as its text, empty cells as "".
        """
        columns = list(dict.fromkeys([*numeric, *text]))
        if self.format == "parquet":
            table = _read_parquet(self.path, columns, self.groups)
            return table if as_written else self._parquet_types(table, numeric, text)
        as_text: set[str] = set()  # numeric columns pyarrow refused to convert: read as text, converted below
        while True:
            types = {n: pa.string() if n in as_text or n in text else pa.float64() for n in columns}
            try:
                table = pcsv.read_csv(
                    self.path,
                    parse_options=self._parse_options(),
                    convert_options=pcsv.ConvertOptions(
                        include_columns=columns, column_types=types, strings_can_be_null=not as_written
                    ),
                )
                break
            except pa.ArrowInvalid as err:
                found = re.match(r"In CSV column #(\d+): .*?conversion error", str(err), re.S)
                if found and "invalid UTF8" in str(err):
                    self._refuse_invalid_utf8(self.columns[int(found.group(1))])
                if not found or self.columns[int(found.group(1))] in as_text:
                    raise DataError(self._explain(err)) from None
                as_text.add(self.columns[int(found.group(1))])
            except OSError as err:
                raise DataError(self._explain(err)) from None
        for name in as_text:  # a cell of spaces is missing; anything else that is not a number is refused
            table = table.set_column(table.schema.get_field_index(name), name, self._to_float(table.column(name), name))
        return table

    def _parquet_types(self, table: pa.Table, numeric: list[str], text: list[str]) -> pa.Table:
        """Parquet columns as `_read_arrow` returns them: `numeric` as float64 (text parsed), `text` as strings."""
        for name in numeric:
            if self.kinds[name] == "text":
                table = table.set_column(table.schema.get_field_index(name), name, self._to_float(table[name], name))
        columns = list(dict.fromkeys([*numeric, *text]))
        # Unchecked: an integer beyond 2**53 becomes the nearest float64, as numpy's `astype` gives it.
        return table.cast(pa.schema([(n, pa.float64() if n in numeric else pa.string()) for n in columns]), safe=False)

    def _refuse_invalid_utf8(self, name: str) -> None:
        """Raise a DataError naming the first cell of column `name` that is not UTF-8 text (error path only)."""
        cells = pcsv.read_csv(
            self.path,
            parse_options=self._parse_options(),
            convert_options=pcsv.ConvertOptions(include_columns=[name], column_types={name: pa.binary()}),
        ).column(name)
        for row, value in enumerate(cells.to_pylist()):
            try:
                (value or b"").decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{self._where(row, name)} is not UTF-8 text (byte 0x{value[err.start]:02x})") from None

    def _to_float(self, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
        """Text cells as float64, or a DataError naming the first one that is not a number."""
        column = pc.if_else(pc.equal(pc.utf8_trim_whitespace(column), ""), None, column)  # an empty cell is missing
        try:
            return pc.cast(pc.utf8_trim_whitespace(column), pa.float64())
        except pa.ArrowInvalid:
            row = _first_failing(column)
            raise DataError(f"{self._where(row, name)}: {column[row].as_py()!r} is not a number") from None

    def _where(self, row: int, column: str) -> str:
        """'file: row N, column 'c'' for the 0-based data row `row` (see the module docstring for counting)."""
        number = self.first_row + row + 1 if self.format == "parquet" else row + 2
        return f"{self.path}: row {number}, column {column!r}"


def _first_failing(column: pa.ChunkedArray) -> int:
    """Index of the first cell that does not cast to float64: a bisection of whole-array casts, all in C++."""
    lo, hi = 0, len(column)  # the first bad cell is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(pc.utf8_trim_whitespace(column.slice(lo, mid - lo)), pa.float64())
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


@functools.cache
def _null_spellings() -> pa.Array:
    """Blank and pyarrow's null spellings. Made on first use: `pa.array` imports pandas where it is installed,
    about 0.25 s of every run's start-up."""
    return pa.array(["", *pcsv.ConvertOptions().null_values])


def _mostly_numbers(column: pa.Array) -> bool:
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


def _kind(dtype: pa.DataType) -> str:
    """'number' for integer, float, decimal and all-null columns; 'text' for everything else (dates included)."""
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "number"
    if pa.types.is_null(dtype):
        return "number"
    return "text"


def _sample(path: Path) -> str:
    """The first lines of a (possibly compressed) text file, whole lines only, for sniffing."""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            data = stream.read(SAMPLE_BYTES // 16)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    if not data.strip():
        raise DataError(f"{path}: the file is empty; expected a header line of column names")
    text = data.decode("utf-8-sig", errors="replace")
    cut = max(text.rfind("\n"), 0)
    return text[:cut] if cut else text


def sniff_delimiter(sample: str) -> str:
    """The delimiter among `DELIMITERS` that splits the sample's lines into the same number (> 1) of fields.

    The candidate giving the most fields wins; a file of one column (no candidate splits it) reads with ",".
    """
    lines = [line for line in sample.splitlines() if line.strip()][:50]
    best, best_count = ",", 1
    for delimiter in DELIMITERS:
        try:
            counts = {len(row) for row in csv.reader(lines, delimiter=delimiter) if row}
        except csv.Error:
            continue
        if len(counts) == 1 and (count := counts.pop()) > best_count:
            best, best_count = delimiter, count
    if best_count == 1 and lines:  # no candidate splits every line alike: the header decides
        header_counts = {d: lines[0].count(d) for d in DELIMITERS}
        top = max(header_counts, key=header_counts.get)
        if header_counts[top] > 0:
            best = top
    return best


def _check_names(path: Path, columns: list[str]) -> None:
    stripped = [c.strip() for c in columns]
    if any(not c for c in stripped):
        raise DataError(f"{path}: the header has an empty column name (column {stripped.index('') + 1})")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise DataError(f"{path}: the header repeats the column name(s) {', '.join(map(repr, repeated))}")


# --- Parquet -----------------------------------------------------------------------------------------------------
def _parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a file or directory (recursively, sorted, hidden and `_` files skipped)."""
    if path.is_file():
        return [path]
    visible = [p for p in path.rglob("*") if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)]
    for p in visible:
        if p.is_symlink() and not p.exists():  # a file of the table that is gone: its rows would be missed silently
            raise DataError(f"{p}: a link to {os.readlink(p)}, which does not exist")
    files = sorted(p for p in visible if p.is_file())
    if not files:
        raise DataError(f"{path}: the directory holds no Parquet files")
    return files


def _parquet_schema(path: Path) -> pa.Schema:
    import pyarrow.parquet as pq

    files = _parquet_files(path)
    schema = None
    for file in files:
        try:
            read = pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{file}: not a readable Parquet file ({str(err).strip().splitlines()[0]})") from None
        if schema is None:
            schema = read
        elif [(f.name, f.type) for f in read] != [(f.name, f.type) for f in schema]:  # nullable or not: alike
            raise DataError(f"{file}: its columns differ from those of {files[0]}")
        elif read != schema:  # a file with a missing value where another has none (see convert.py)
            schema = pa.schema(
                [f.with_nullable(f.nullable or g.nullable) for f, g in zip(schema, read, strict=True)],
                metadata=schema.metadata,
            )
    return schema


def _read_parquet(path: Path, columns: list[str], groups: list | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    if groups is not None:
        from lit_linreg.parquet import read_groups

        return read_groups(groups, columns)
    try:
        parts = [pq.read_table(file, columns=columns) for file in _parquet_files(path)]
        return pa.concat_tables(parts, promote_options="default")  # a column required in one file, nullable in another
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({str(err).strip().splitlines()[0]})") from None
