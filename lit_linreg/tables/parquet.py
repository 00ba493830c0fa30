"""A Parquet table: its files, their schema and row groups, each rank's share, and reading them.

A table is a Parquet file or a directory of them (recursively, sorted by name; hidden and `_` files skipped),
whose files must agree on their columns. Under DDP every rank reads only its share: whole row groups,
contiguous in the table's order (files sorted by name, row groups in file order), as equal in rows as whole row
groups allow. The shares cover every row group exactly once, whatever the world size. Only the files' footers
are read to decide it, on every rank alike, so the ranks agree without talking. Which split a row belongs to is
a hash of its row number (see splits.py), so a rank or a stream decides its rows alone.

A table in an object store (storage.py) is read the same way, a file at a time through its `StoredFile`: the
footers, then only the byte ranges of the row groups read, each row group's column chunks fetched together
(pre-buffered: a few ranged requests a row group, not one a page).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lit_linreg.errors import DataError
from lit_linreg.tables.storage import StoredFile, store_error

READ_BUFFER = 1 << 16  # bytes a file is read by when a table is read block by block (`read_blocks`)


@dataclass(frozen=True)
class RowGroup:
    """One row group of a Parquet table: its file, index in the file, first row (in the table) and size."""

    file: str
    index: int
    first_row: int
    n_rows: int
    stored: StoredFile | None = field(default=None, compare=False, repr=False)  # in an object store: how to open it


def parquet_files(path: Path) -> list[Path]:
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


def read_schema(files: list[Path | StoredFile]) -> pa.Schema:
    """The columns of a table's Parquet files, refusing files whose columns differ."""
    schema = None
    for file in files:
        try:
            if isinstance(file, StoredFile):  # the footer kept: `row_groups` needs it next, and a read is a request
                read = footer(file).schema.to_arrow_schema()
            else:
                with opened(file) as source:
                    read = pq.read_schema(source)
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(file, err) from None
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


def read_table(files: list[Path | StoredFile], columns: list[str], groups: list[RowGroup] | None = None) -> pa.Table:
    """The named columns of the whole table, or of `groups` alone."""
    if groups is not None:
        return read_groups(groups, columns)
    parts = []
    for file in files:
        try:
            with opened(file) as source:
                parts.append(pq.read_table(source, columns=columns))
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(file, err) from None
    return pa.concat_tables(parts, promote_options="default")  # a column required in one file, nullable in another


def row_groups(files: list[Path | StoredFile]) -> list[RowGroup]:
    """Every row group of `files`, in table order, from the footers alone."""
    groups, first = [], 0
    for file in files:
        try:
            metadata = footer(file)
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(file, err) from None
        stored = file if isinstance(file, StoredFile) else None
        for index in range(metadata.num_row_groups):
            n = metadata.row_group(index).num_rows
            if n:
                groups.append(RowGroup(str(file), index, first, n, stored))
                first += n
    return groups


def rank_share(groups: list[RowGroup], rank: int, world_size: int) -> list[RowGroup]:
    """The contiguous run of whole row groups that `rank` reads: a group goes to the rank its middle row falls in."""
    n_rows = sum(g.n_rows for g in groups)
    share = [
        g for g in groups if min(world_size - 1, world_size * (2 * g.first_row + g.n_rows) // (2 * n_rows)) == rank
    ]
    if not share:
        raise DataError(
            f"{os.path.dirname(groups[0].file) if groups else 'the table'}: {len(groups)} row groups cannot give"
            f" each of {world_size} ranks one; rewrite it with smaller row groups"
            " (python -m lit_linreg.tables.convert TABLE DIR --rows-per-group N)"
        )
    return share


def read_groups(
    groups: list[RowGroup], columns: list[str], files: dict | None = None, use_threads: bool = True
) -> pa.Table:
    """The named columns of `groups`, concatenated in the order given.

    `files`, if given, keeps each file's parsed footer from call to call (a stream reads one row group at a
    time, every epoch): the file is opened again each call, so no reader keeps a row group's buffers alive.
    `use_threads`: decode the columns in pyarrow's thread pool, or in the calling thread alone.
    """
    files = {} if files is None else files
    parts = []
    for file, run in groupby(groups, key=lambda g: g.file):
        run = list(run)
        try:
            with opened(run[0].stored or file) as source:
                metadata = files.get(file) or (run[0].stored and run[0].stored.footer)
                reader = pq.ParquetFile(source, metadata=metadata)  # pre-buffered: see the module docstring
                files.setdefault(file, reader.metadata)
                parts.append(reader.read_row_groups([g.index for g in run], columns=columns, use_threads=use_threads))
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(run[0].stored or file, err) from None
    return pa.concat_tables(parts, promote_options="default")  # a column required in one file, nullable in another


def read_blocks(groups: list[RowGroup], columns: list[str], rows: int) -> Iterator[tuple[int, pa.Table]]:
    """The named columns of `groups`, at most `rows` rows at a time: `(first_row, block)` pairs, in table order.

    A row group is decoded a piece at a time, so only one block's columns are held, whatever the row groups'
    size; `first_row` is the block's first row in the table, counted from 0. Decoded in the calling thread:
    what pyarrow's allocator keeps for other threads is not given back by `release_unused`.
    """
    for file, run in groupby(groups, key=lambda g: g.file):
        run = list(run)
        first = run[0].first_row
        # Local: not pre-buffered, or pyarrow would read every requested row group's bytes at once (the whole file,
        # 69 MiB held for a 49 MiB file of pyarrow's defaults, measured); a 64 KiB buffered stream holds 22. In an
        # object store, a 64 KiB read is a request: each row group's column chunks are fetched together instead,
        # one row group at a time, so what is held is one row group's compressed bytes.
        stored = run[0].stored
        runs = [[g.index] for g in run] if stored is not None else [[g.index for g in run]]
        try:
            with opened(stored or file) as source:
                options = {"pre_buffer": stored is not None, "buffer_size": 0 if stored is not None else READ_BUFFER}
                with pq.ParquetFile(source, metadata=stored and stored.footer, **options) as reader:
                    for indices in runs:
                        for batch in reader.iter_batches(rows, row_groups=indices, columns=columns, use_threads=False):
                            yield first, pa.Table.from_batches([batch])
                            first += batch.num_rows
                            # pyarrow's allocator (mimalloc) keeps what the block's decoding freed for reuse: given
                            # back now, a table read block after block leaves about one block resident, not a few
                            # hundred MiB.
                            pa.default_memory_pool().release_unused()
        except (pa.ArrowInvalid, OSError) as err:
            raise _unreadable(stored or file, err) from None


def footer(file: Path | StoredFile) -> pq.FileMetaData:
    """A Parquet file's footer: read from the file, or kept from the first read of a file in an object store."""
    if isinstance(file, StoredFile) and file.footer is not None:
        return file.footer
    with opened(file) as source:
        metadata = pq.ParquetFile(source).metadata
    if isinstance(file, StoredFile):
        file.footer = metadata
    return metadata


def opened(file: str | Path | StoredFile):
    """A context giving what pyarrow reads `file` from: its path, or an object store's file opened (and closed)."""
    if isinstance(file, StoredFile):
        return contextlib.closing(file.open())
    return contextlib.nullcontext(str(file))


def _unreadable(file: str | Path | StoredFile, err: Exception) -> DataError:
    """One line for a file pyarrow could not read: what the store answered, or why it is not Parquet."""
    if isinstance(file, StoredFile) and (message := store_error(file.url, err)):
        return DataError(message)
    return DataError(f"{file}: not a readable Parquet file ({str(err).strip().splitlines()[0]})")
