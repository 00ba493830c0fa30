"""Write `SyntheticDataModule`'s rows as a Parquet directory, for the streaming benchmarks.

`python benchmarks/write_parquet.py DIR --n-samples N` writes N x 32 float32 features and one target,
the same rows as `configs/synthetic.yaml` makes, as files of 1,048,576 rows in row groups of 65,536, written
as `python -m lit_linreg.convert` writes them (required columns, no dictionary for the float columns);
`--nullable` declares every column nullable, as pandas and most writers do.
"""

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lit_linreg import SyntheticDataModule
from lit_linreg.convert import stream_schema, writer_options

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("directory")
parser.add_argument("--n-samples", type=int, default=2_097_152)
parser.add_argument("--n-features", type=int, default=32)
parser.add_argument("--nullable", action="store_true", help="declare every column nullable, as pandas writes them")
args = parser.parse_args()

dm = SyntheticDataModule(n_samples=args.n_samples, n_features=args.n_features)
out = Path(args.directory)
out.mkdir(parents=True)
step = 1 << 20
for i, start in enumerate(range(0, args.n_samples, step)):
    x, y = dm.rows(start, min(start + step, args.n_samples))
    columns = {f"x{j}": x[:, j].numpy() for j in range(x.shape[1])} | {"y": y[:, 0].numpy()}
    table = pa.table(columns)
    nullable = set(table.column_names) if args.nullable else {n for n in table.column_names if table[n].null_count}
    table = table.cast(stream_schema(table.schema, nullable))
    pq.write_table(table, out / f"part-{i:05d}.parquet", row_group_size=65536, **writer_options(table.schema))
