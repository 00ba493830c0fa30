"""A CSV or TSV file (gzipped or not): its delimiter, its columns' kinds, and what pyarrow refuses, in one line.

pyarrow's C++ CSV reader is multi-threaded, infers types, knows nulls and quoting, and reads only the columns
asked for. What it does not do is say which row broke a parse: only its single-threaded reader knows row
numbers, so that reader runs on the error path alone, to name the row.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.csv as pcsv

from lit_linreg.errors import DataError
from lit_linreg.tables.columns import check_names, kind_of, mostly_numbers
from lit_linreg.tables.storage import StoredFile, store_error


class CsvTable(Protocol):
    """What the reading here needs of a `Table` (table.py), which calls it: no import back up."""

    path: Path | str  # a URL, in an object store
    source: Path | StoredFile  # what pyarrow reads (see `source_of`)
    delimiter: str
    columns: list[str]

    def to_float(self, column: pa.ChunkedArray, name: str) -> pa.ChunkedArray: ...

    def where(self, row: int, column: str) -> str: ...


DELIMITERS = ",;\t|"  # what sniffing chooses among; --data.delimiter takes any one character
SAMPLE_BYTES = 1 << 20  # the first MiB decides the delimiter and which columns are text


def parse_options(delimiter: str, handler=None) -> pcsv.ParseOptions:
    return pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=handler)


def source_of(path: Path | StoredFile) -> str | pa.NativeFile:
    """What pyarrow reads a CSV file from: its path (pyarrow decompresses as the name says), or an object store's
    stream of it, read once from start to end (decompressed alike; see storage.py)."""
    return path.stream() if isinstance(path, StoredFile) else str(path)


def sample(path: Path | StoredFile) -> str:
    """The first lines of a (possibly compressed) text file, whole lines only, for sniffing."""
    try:
        with pa.input_stream(source_of(path), compression="detect") as stream:
            data = stream.read(SAMPLE_BYTES // 16)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(store_error(str(path), err) or f"{path}: cannot read: {err}") from None
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


def column_kinds(path: Path | StoredFile, delimiter: str) -> tuple[pa.Schema, dict[str, str]]:
    """Column kinds from the first block: pyarrow's inference, then a vote for columns it calls text."""
    try:
        try:
            reader, first = _first_block(_head(path), delimiter)
        except pa.ArrowInvalid:  # the head was cut inside a quoted field: read on as a local file is read
            reader, first = _first_block(source_of(path), delimiter)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(explain(path, delimiter, err)) from None
    try:
        names = reader.schema.names
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: the header is not UTF-8 text (byte 0x{err.object[err.start]:02x})") from None
    check_names(path, names)
    if first is None or first.num_rows == 0:
        raise DataError(f"{path}: no data rows below the header")
    kinds = {}
    for field, column in zip(reader.schema, first.columns, strict=True):
        kind = kind_of(field.type)
        if kind == "text" and (pa.types.is_string(field.type) or pa.types.is_binary(field.type)):
            kind = "number" if mostly_numbers(column) else "text"
        kinds[field.name] = kind
    return reader.schema, kinds


def _first_block(source: str | pa.NativeFile, delimiter: str) -> tuple[pcsv.CSVStreamingReader, pa.RecordBatch | None]:
    """pyarrow's reader of `source`, and its first block of rows (None if there are none)."""
    reader = pcsv.open_csv(
        source,
        read_options=pcsv.ReadOptions(block_size=SAMPLE_BYTES, use_threads=False),
        parse_options=parse_options(delimiter),
    )
    try:
        return reader, reader.read_next_batch()
    except StopIteration:
        return reader, None


def _head(path: Path | StoredFile) -> str | pa.NativeFile:
    """What the first block is read from: a local file itself, or an object store's first `SAMPLE_BYTES`, cut
    after its last whole line: read as a stream, pyarrow's reader would fetch a few blocks ahead of the first."""
    if not isinstance(path, StoredFile):
        return str(path)
    with path.stream() as stream:
        data = stream.read(SAMPLE_BYTES)
    if len(data) == SAMPLE_BYTES and (cut := data.rfind(b"\n")) > 0:
        data = data[: cut + 1]
    return pa.BufferReader(data)


def read_columns(table: CsvTable, numeric: list[str], text: list[str], as_written: bool = False) -> pa.Table:
    """The columns as arrow arrays: `numeric` as float64, `text` as strings, empty cells as nulls.

    With `as_written`, nothing is converted: every CSV cell comes back as its text, empty cells as "".
    """
    columns = list(dict.fromkeys([*numeric, *text]))
    as_text: set[str] = set()  # numeric columns pyarrow refused to convert: read as text, converted below
    while True:
        types = {n: pa.string() if n in as_text or n in text else pa.float64() for n in columns}
        try:
            read = pcsv.read_csv(
                source_of(table.source),
                parse_options=parse_options(table.delimiter),
                convert_options=pcsv.ConvertOptions(
                    include_columns=columns, column_types=types, strings_can_be_null=not as_written
                ),
            )
            break
        except pa.ArrowInvalid as err:
            found = re.match(r"In CSV column #(\d+): .*?conversion error", str(err), re.S)
            if found and "invalid UTF8" in str(err):
                _refuse_invalid_utf8(table, table.columns[int(found.group(1))])
            if not found or table.columns[int(found.group(1))] in as_text:
                raise DataError(explain(table.source, table.delimiter, err)) from None
            as_text.add(table.columns[int(found.group(1))])
        except OSError as err:
            raise DataError(explain(table.source, table.delimiter, err)) from None
    for name in as_text:  # a cell of spaces is missing; anything else that is not a number is refused
        read = read.set_column(read.schema.get_field_index(name), name, table.to_float(read.column(name), name))
    return read


def explain(path: Path | StoredFile, delimiter: str, err: Exception) -> str:
    """One line for what pyarrow refused while parsing CSV text (not a value's conversion)."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(path, StoredFile) and (said := store_error(path.url, err)):
        return said
    if isinstance(err, OSError) and not isinstance(err, pa.ArrowException):
        return f"{path}: cannot read: {err.strerror or err}"
    if "Empty CSV file" in message:
        return f"{path}: the file is empty; expected a header line of column names"
    if "gzip" in message.lower() or "decompress" in message.lower():
        return f"{path}: not a readable gzip file ({message})"
    bad = _first_bad_row(path, delimiter)
    if bad is not None:
        number, expected, actual = bad
        return f"{path}: row {number} has {actual} fields, the header names {expected}"
    return f"{path}: {message.removeprefix('CSV parse error: ')}"


def _first_bad_row(path: Path | StoredFile, delimiter: str) -> tuple[int, int, int] | None:
    """(row, expected, actual) of the first row with the wrong number of fields, read single-threaded.

    Only the single-threaded reader knows row numbers, so this runs on the error path alone.
    """
    found = []

    def handler(row) -> str:
        found.append((row.number, row.expected_columns, row.actual_columns))
        return "error"

    try:
        pcsv.read_csv(
            source_of(path),
            read_options=pcsv.ReadOptions(use_threads=False),
            parse_options=parse_options(delimiter, handler),
        )
    except (pa.ArrowInvalid, OSError):  # the handler saw the bad row first, if there is one
        pass
    return found[0] if found else None


def _refuse_invalid_utf8(table: CsvTable, name: str) -> None:
    """Raise a DataError naming the first cell of column `name` that is not UTF-8 text (error path only)."""
    cells = pcsv.read_csv(
        source_of(table.source),
        parse_options=parse_options(table.delimiter),
        convert_options=pcsv.ConvertOptions(include_columns=[name], column_types={name: pa.binary()}),
    ).column(name)
    for row, value in enumerate(cells.to_pylist()):
        try:
            (value or b"").decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{table.where(row, name)} is not UTF-8 text (byte 0x{value[err.start]:02x})") from None
