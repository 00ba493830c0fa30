"""Time reading a numeric CSV: lit_linreg's pyarrow reader against numpy's `loadtxt`, the reader it replaced.

`python benchmarks/read_table.py --write PATH` writes the table (1,000,000 x 32 by default);
`python benchmarks/read_table.py --reader {lit_linreg,numpy} PATH` reads it and prints `READ_SECONDS s`,
the time of the read alone (imports excluded): every column as float64 for lit_linreg, as numpy's
float32 for the old reader.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def write(path: str, rows: int, columns: int) -> None:
    values = np.random.default_rng(0).normal(size=(rows, columns))
    header = ",".join(f"x{i}" for i in range(columns - 1)) + ",y"
    np.savetxt(path, values, delimiter=",", header=header, comments="", fmt="%.6g")


def read(path: str, reader: str) -> float:
    if reader == "numpy":
        start = time.perf_counter()
        np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2, comments=None, encoding="utf-8")
        return time.perf_counter() - start
    from lit_linreg.tables.table import Table

    start = time.perf_counter()
    table = Table(path)
    table.read(table.columns)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--write", action="store_true", help="write the table instead of reading it")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=32)
    parser.add_argument("--reader", choices=["lit_linreg", "numpy"], default="lit_linreg")
    args = parser.parse_args()
    if args.write:
        write(args.path, args.rows, args.columns)
    else:
        print(f"READ_SECONDS {read(args.path, args.reader):.4f}")


if __name__ == "__main__":
    main()
