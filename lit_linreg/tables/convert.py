"""Convert a table to a Parquet directory that DDP ranks can share: `python -m lit_linreg.tables.convert TABLE DIR`.

A CSV file is read whole by every rank; a Parquet directory is split across ranks by whole row groups, so each
reads only its share (see parquet.py). This streams the table in batches, never holding it whole, and writes
files of `--rows-per-file` rows, each in row groups of `--rows-per-group` rows. Use at least as many row groups
as you will run ranks (many more balance them better). Columns keep the types pyarrow infers for the CSV file.
The table may be in an object store (`s3://bucket/sales.csv`, read as `--data.path` reads it: see storage.py);
the directory is written on this machine or a shared file system, to be copied to the bucket after.

Written to be streamed (`--data.in_memory false`), each epoch: a column with no missing value anywhere is
declared required, not nullable, so that no reader decodes its definition levels (pyarrow then decodes a
float column in about half the time, measured); to know which, a CSV file is read twice (a Parquet table's
footers tell, if they hold null counts). Floating-point columns keep no dictionary (see
`writer_options`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from lit_linreg.errors import ConfigError, DataError
from lit_linreg.tables.csvfile import source_of
from lit_linreg.tables.parquet import opened
from lit_linreg.tables.storage import is_url
from lit_linreg.tables.table import Table


def batches(table: Table):
    """The table's record batches, streamed: CSV in blocks, Parquet by row group."""
    if table.format == "parquet":
        for file in table.files():
            with opened(file) as source:
                yield from pq.ParquetFile(source).iter_batches()
        return
    reader = pcsv.open_csv(
        source_of(table.source),
        parse_options=table._parse_options(),
        convert_options=pcsv.ConvertOptions(column_types=table.schema),
    )
    yield from reader


def with_nulls(table: Table) -> set[str]:
    """The table's columns with a missing value in some row: from a Parquet table's footers when they all
    count nulls and every column is flat (a footer counts the nulls of each leaf of a nested one), else from
    one pass over the rows."""
    if table.format == "parquet" and not any(pa.types.is_nested(field.type) for field in table.schema):
        footers = []
        for file in table.files():
            with opened(file) as source:
                footers.append(pq.ParquetFile(source).metadata)
        columns = [
            group.column(i)
            for metadata in footers
            for group in map(metadata.row_group, range(metadata.num_row_groups))
            for i in range(group.num_columns)
        ]
        if all(column.statistics is not None and column.statistics.has_null_count for column in columns):
            return {column.path_in_schema for column in columns if column.statistics.null_count}
    found: set[str] = set()
    for batch in batches(table):
        found.update(name for name, column in zip(batch.schema.names, batch.columns, strict=True) if column.null_count)
    return found


def stream_schema(schema: pa.Schema, nullable: set[str]) -> pa.Schema:
    """`schema` with every column not in `nullable` declared required (see the module docstring)."""
    return pa.schema([field.with_nullable(field.name in nullable) for field in schema], metadata=schema.metadata)


def writer_options(schema: pa.Schema) -> dict:
    """ParquetWriter options for a table to stream: dictionary encoding for all but floating-point columns.

    Measured floats rarely repeat, so a dictionary of them only grows the file (by half, for normal draws) and
    doubles the time each epoch takes to decode it; text and integer columns keep theirs.
    """
    return {"use_dictionary": [field.name for field in schema if not pa.types.is_floating(field.type)]}


def convert(source: str, target: str, rows_per_group: int = 65536, rows_per_file: int = 1 << 22) -> list[Path]:
    """Write `source` as Parquet files `part-00000.parquet`, ... in the new directory `target`; returns them."""
    if rows_per_group < 1 or rows_per_file < rows_per_group:
        raise DataError("--rows-per-group must be at least 1 and --rows-per-file at least --rows-per-group")
    if is_url(target):
        raise DataError(
            f"{target}: convert writes to a directory on this machine or a shared file system; copy it to the bucket"
            " after (aws s3 cp --recursive DIR s3://bucket/prefix/, gcloud storage cp -r, azcopy copy --recursive)"
        )
    table = Table(source)
    out = Path(target)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty directory")
    if isinstance(table.path, Path) and table.path.is_dir() and out.resolve().is_relative_to(table.path.resolve()):
        raise DataError(f"{out}: is inside {source}, whose files would then be read twice as one table")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    writer, in_file = None, 0
    try:
        schema = stream_schema(table.schema, with_nulls(table))
        for batch in batches(table):
            while batch.num_rows:
                if writer is None:
                    written.append(out / f"part-{len(written):05d}.parquet")
                    writer = pq.ParquetWriter(written[-1], schema, **writer_options(schema))
                    in_file = 0
                take = min(batch.num_rows, rows_per_file - in_file)
                try:
                    rows = pa.Table.from_batches([batch.slice(0, take)]).cast(schema)  # a required column: no nulls
                except ValueError as err:  # a null the first pass did not see
                    raise DataError(
                        f"{source}: {err}, which the first pass did not count: the table changed while it was"
                        " converted, or its Parquet footers miscount nulls"
                    ) from None
                writer.write_table(rows, row_group_size=rows_per_group)
                batch, in_file = batch.slice(take), in_file + take
                if in_file == rows_per_file:
                    writer.close()
                    writer = None
    except BaseException as err:  # what was written is removed, so that the same command can run again
        if writer is not None:
            writer.close()
            writer = None
        for file in written:
            file.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                out.rmdir()
        if isinstance(err, pa.ArrowInvalid | OSError):  # a bad cell or page in the source, a full disk
            raise DataError(f"{source}: {str(err).strip().splitlines()[0]}") from None
        raise
    finally:
        if writer is not None:
            writer.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lit_linreg.tables.convert", description=__doc__.splitlines()[0])
    parser.add_argument(
        "table", help="a CSV, TSV (optionally .gz) or Parquet file or directory, or its URL (s3://bucket/sales.csv)"
    )
    parser.add_argument("directory", help="the Parquet directory to create (new or empty)")
    parser.add_argument("--rows-per-group", type=int, default=65536, help="rows per row group (default 65536)")
    parser.add_argument("--rows-per-file", type=int, default=1 << 22, help="rows per file (default 4194304)")
    args = parser.parse_args(argv)
    try:
        files = convert(args.table, args.directory, args.rows_per_group, args.rows_per_file)
    except (DataError, ConfigError) as err:
        print(f"lit-linreg: error: {err}", file=sys.stderr)
        return 2
    n_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    n_groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)
    print(f"{args.directory}: {n_rows} rows in {len(files)} files, {n_groups} row groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
