"""Write `SyntheticDataModule`'s rows as a Parquet directory, for the streaming benchmarks.

`python benchmarks/write_parquet.py DIR --n-samples N` writes N x 32 float32 features and one target,
the same rows as `configs/synthetic.yaml` makes, as files of 1,048,576 rows in row groups of 65,536, written
as `python -m lit_linreg.convert` writes them (no dictionary for the float columns).
"""

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lit_linreg import SyntheticDataModule
from lit_linreg.convert import writer_options

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("directory")
parser.add_argument("--n-samples", type=int, default=2_097_152)
parser.add_argument("--n-features", type=int, default=32)
args = parser.parse_args()

dm = SyntheticDataModule(n_samples=args.n_samples, n_features=args.n_features)
out = Path(args.directory)
out.mkdir(parents=True)
step = 1 << 20
for i, start in enumerate(range(0, args.n_samples, step)):
    x, y = dm.rows(start, min(start + step, args.n_samples))
    columns = {f"x{j}": x[:, j].numpy() for j in range(x.shape[1])} | {"y": y[:, 0].numpy()}
    table = pa.table(columns)
    pq.write_table(table, out / f"part-{i:05d}.parquet", row_group_size=65536, **writer_options(table.schema))
