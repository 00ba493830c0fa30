"""Reading a user's table: CSV (any one-character delimiter), TSV, either gzipped, Parquet files and directories,
on this machine or in an object store (`s3://bucket/prefix/`, `gs://`, `abfs://`, `az://`: see storage.py).

pyarrow does the reading (see csvfile.py and parquet.py for what each format needs). A `Table` knows its
columns and their kinds (see columns.py) before any row is read in full, turns what pyarrow refuses into one
line naming the file, row and column, and hands back float64 numpy columns (NaN where a cell is missing).

Rows of a CSV file are counted as pyarrow counts them: the header is row 1 and blank lines are skipped, so in
a file without blank lines or line breaks inside quoted fields, row N is line N. Rows of a Parquet table are
counted from 1.
"""

from __future__ import annotations

import copy
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from lit_linreg.errors import DataError
from lit_linreg.tables import csvfile, storage
from lit_linreg.tables.columns import check_names, kind_of
from lit_linreg.tables.csvfile import sniff_delimiter

Format = Literal["csv", "tsv", "parquet"]
FORMATS = ("csv", "tsv", "parquet")
BLOCK_ROWS = 16384  # rows of a Parquet table read at a time (`Table.blocks`): 4 MiB of float64 for 33 columns


def table_format(path: Path, format: Format | None = None, is_dir: bool | None = None) -> Format:
    """The format of `path`: `format` if given, else from its extension (after `.gz`); a directory is Parquet.

    `is_dir`: whether `path` is a directory (an object store's prefix), if known; else asked of the file system.
    """
    if format is not None:
        if format not in FORMATS:
            raise DataError(f"data.format must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    if path.is_dir() if is_dir is None else is_dir:
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
        path: A CSV/TSV file (optionally `.gz`), a Parquet file, or a directory of Parquet files; or the URL of one
            in an object store (a directory: a prefix).
        format: "csv", "tsv" or "parquet"; chosen from the extension if None.
        delimiter: One character separating CSV fields; sniffed from the first lines if None.
        storage_options: For a URL, the store's `endpoint` and `region` (see storage.py); never credentials.
    """

    def __init__(
        self,
        path: str | Path,
        format: Format | None = None,
        delimiter: str | None = None,
        storage_options: dict | None = None,
    ) -> None:
        self._files: list | None = None  # the Parquet files, once listed (see `files`)
        self.source: Path | storage.StoredFile  # what pyarrow reads: a path, or a file or prefix in an object store
        if storage.is_url(path):
            self.path = str(path)  # the URL as given, as messages name it
            self.source = storage.locate(self.path, storage_options)
            is_dir = self.source.is_dir
        else:
            self.path = self.source = Path(path)
            check_readable(self.path)
            is_dir = self.path.is_dir()
        self.format = table_format(Path(self.path), format, is_dir)
        if self.format != "parquet" and is_dir:
            raise DataError(f"{self.path}: is a directory; a directory is read as Parquet (--data.format parquet)")
        if delimiter is not None and len(delimiter) != 1:
            raise DataError(f"data.delimiter must be one character, got {delimiter!r}")
        if self.format == "parquet":
            from lit_linreg.tables.parquet import read_schema

            self.delimiter = None
            self.schema = read_schema(self.files())
            self.kinds = {f.name: kind_of(f.type) for f in self.schema}
        else:
            sample = csvfile.sample(self.source)
            self.delimiter = delimiter or ("\t" if self.format == "tsv" else sniff_delimiter(sample))
            self.schema, self.kinds = csvfile.column_kinds(self.source, self.delimiter)
        self.columns = list(self.kinds)
        self.groups = None  # the row groups this view reads (see `share`); None: every row
        self._all_groups: list | None = None  # every row group, once read from the footers (see `row_groups`)
        self.first_row = 0  # the table's row number of this view's first row
        if self.format == "parquet":
            check_names(self.path, self.schema.names)

    def share(self, rank: int, world_size: int) -> Table:
        """This rank's share of a Parquet table: a view that reads only its own whole row groups (see parquet.py)."""
        from lit_linreg.tables import parquet

        return self.view(parquet.rank_share(self.row_groups(), rank, world_size))

    def row_groups(self) -> list:
        """Every row group of a Parquet table, in the table's order, from the files' footers (see parquet.py).

        Read once: over a network, each file's footer is a request or two.
        """
        from lit_linreg.tables import parquet

        if self._all_groups is None:
            self._all_groups = parquet.row_groups(self.files())
        return self._all_groups

    def files(self) -> list[Path | storage.StoredFile]:
        """The Parquet files of this table (see parquet.py): its local paths, or its files in an object store.

        Listed once: an object store's files keep the versions first read of them (see storage.py).
        """
        if self._files is None:
            if isinstance(self.source, Path):
                self._files = _parquet_files(self.source)
            else:
                self._files = self.source.listing() if self.source.is_dir else [self.source]
                if not self._files:
                    raise DataError(f"{self.path}: the prefix holds no Parquet files")
        return self._files

    def view(self, groups: list) -> Table:
        """The same table, reading only `groups`: contiguous row groups, in the table's order."""
        view = copy.copy(self)
        view.groups, view.first_row = list(groups), groups[0].first_row
        return view

    def _parse_options(self, handler=None) -> pcsv.ParseOptions:
        """How pyarrow parses this CSV file (convert.py streams it with these)."""
        return csvfile.parse_options(self.delimiter, handler)

    def read(self, numeric: list[str], text: list[str] = ()) -> dict[str, np.ndarray]:
        """The named columns: float64 arrays for `numeric` (NaN where missing), object arrays for `text` (None).

        Raises DataError naming the row and column of a cell that is not a number, or is infinite.
        """
        return self._columns(self._read_arrow(numeric, text), numeric, text)

    def blocks(self, numeric: list[str], text: list[str] = (), rows: int = BLOCK_ROWS) -> Iterator[tuple[Table, dict]]:
        """The named columns as `read` gives them, at most `rows` rows at a time: `(part, columns)` pairs.

        `part` is this table as seen from the block's first row, so `part.where(row, name)` names the block's
        row `row` as the whole table counts it. A Parquet table is read block by block (a row group decoded a
        piece at a time), so what a block costs is freed before the next is read; a CSV file is one block.
        """
        if self.format != "parquet":
            yield self, self.read(numeric, text)
            return
        from lit_linreg.tables.parquet import read_blocks

        columns = list(dict.fromkeys([*numeric, *text]))
        for first_row, table in read_blocks(self.groups or self.row_groups(), columns, rows):
            part = copy.copy(self)
            part.first_row = first_row
            yield part, part._columns(part._parquet_types(table, numeric, text), numeric, text)

    def written_blocks(self, numeric: list[str], text: list[str] = (), rows: int = BLOCK_ROWS) -> Iterator[tuple]:
        """`blocks`, each with its rows as `read_as_written` gives them: `(part, columns, written)` triples.

        Every column of the block is decoded once: `written` holds them all, `columns` the named ones as numbers
        and text. A CSV file is one block, as in `blocks`.
        """
        if self.format != "parquet":
            yield self, self.read(numeric, text), self.read_as_written()
            return
        from lit_linreg.tables.parquet import read_blocks

        used = list(dict.fromkeys([*numeric, *text]))
        for first_row, table in read_blocks(self.groups or self.row_groups(), self.columns, rows):
            part = copy.copy(self)
            part.first_row = first_row
            yield part, part._columns(part._parquet_types(table.select(used), numeric, text), numeric, text), table

    def _columns(self, table: pa.Table, numeric: list[str], text: list[str]) -> dict[str, np.ndarray]:
        """`read`'s arrays of an arrow table of float64 and string columns, refusing an infinite number."""
        out: dict[str, np.ndarray] = {}
        for name in numeric:
            values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            infinite = np.isinf(values)
            if infinite.any():
                row = int(np.argmax(infinite))
                raise DataError(f"{self.where(row, name)}: {values[row]} is not a finite number")
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
        if self.format != "parquet":
            return csvfile.read_columns(self, numeric, text, as_written)
        from lit_linreg.tables.parquet import read_table

        table = read_table(self.files(), list(dict.fromkeys([*numeric, *text])), self.groups)
        return table if as_written else self._parquet_types(table, numeric, text)

    def _parquet_types(self, table: pa.Table, numeric: list[str], text: list[str]) -> pa.Table:
        """Parquet columns as `_read_arrow` returns them: `numeric` as float64 (text parsed), `text` as strings."""
        for name in numeric:
            if self.kinds[name] == "text":
                table = table.set_column(table.schema.get_field_index(name), name, self.to_float(table[name], name))
        columns = list(dict.fromkeys([*numeric, *text]))
        # Unchecked: an integer beyond 2**53 becomes the nearest float64, as numpy's `astype` gives it.
        return table.cast(pa.schema([(n, pa.float64() if n in numeric else pa.string()) for n in columns]), safe=False)

    def to_float(self, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
        """Text cells of column `name` as float64, or a DataError naming the first one that is not a number."""
        column = pc.if_else(pc.equal(pc.utf8_trim_whitespace(column), ""), None, column)  # an empty cell is missing
        try:
            return pc.cast(pc.utf8_trim_whitespace(column), pa.float64())
        except pa.ArrowInvalid:
            row = _first_failing(column)
            raise DataError(f"{self.where(row, name)}: {column[row].as_py()!r} is not a number") from None

    def where(self, row: int, column: str) -> str:
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


def _parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a file or directory (see parquet.py); checkpoint.py and convert.py name it here.

    Imported on use: a CSV run never loads pyarrow's Parquet reader.
    """
    from lit_linreg.tables.parquet import parquet_files

    return parquet_files(path)
