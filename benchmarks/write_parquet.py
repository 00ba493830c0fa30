"""Write `SyntheticDataModule`'s rows as a Parquet directory, for the streaming and memory benchmarks.

`python benchmarks/write_parquet.py DIR --n-samples N` writes N x 32 float32 features and one target,
the same rows as `configs/synthetic.yaml` makes, as files of `--rows-per-file` rows in row groups of
`--rows-per-group` (65,536).
`--writer` chooses who writes them:
- `convert` (the default): as `python -m lit_linreg.tables.convert` writes them (required columns, no dictionary for
  the float columns); `--nullable` declares every column nullable, as most writers do;
- `pyarrow`: `pyarrow.parquet.write_table` with its defaults (nullable columns, dictionary encoding);
- `pandas`: `pandas.DataFrame.to_parquet` with its defaults (the same, and pandas' own schema metadata).
"""

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lit_linreg import SyntheticDataModule
from lit_linreg.tables.convert import stream_schema, writer_options

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("directory")
parser.add_argument("--n-samples", type=int, default=2_097_152)
parser.add_argument("--n-features", type=int, default=32)
parser.add_argument("--rows-per-file", type=int, default=1 << 20)
parser.add_argument("--rows-per-group", type=int, default=65536)
parser.add_argument("--writer", choices=["convert", "pyarrow", "pandas"], default="convert")
parser.add_argument("--nullable", action="store_true", help="convert: declare every column nullable")
args = parser.parse_args()

dm = SyntheticDataModule(n_samples=args.n_samples, n_features=args.n_features)
out = Path(args.directory)
out.mkdir(parents=True)
for i, start in enumerate(range(0, args.n_samples, args.rows_per_file)):
    x, y = dm.rows(start, min(start + args.rows_per_file, args.n_samples))
    columns = {f"x{j}": x[:, j].numpy() for j in range(x.shape[1])} | {"y": y[:, 0].numpy()}
    path = out / f"part-{i:05d}.parquet"
    if args.writer == "pandas":
        import pandas as pd

        pd.DataFrame(columns).to_parquet(path, row_group_size=args.rows_per_group)
        continue
    table = pa.table(columns)
    if args.writer == "pyarrow":
        pq.write_table(table, path, row_group_size=args.rows_per_group)
        continue
    nullable = set(table.column_names) if args.nullable else {n for n in table.column_names if table[n].null_count}
    table = table.cast(stream_schema(table.schema, nullable))
    pq.write_table(table, path, row_group_size=args.rows_per_group, **writer_options(table.schema))
