"""A streamed full batch: `configs/table.yaml` (batch_size null) with `--data.in_memory false`; prints a table.

The command is a new user's on a table larger than memory, with the stop rule off so that it trains one epoch:

    python -m lit_linreg fit --config configs/table.yaml --data.path DIR --data.targets '[y]' --data.in_memory false \\
        --trainer.max_epochs 1 --reference.stop_at_relative_gap null --reference.stop_when_stalled null

on Parquet directories written by `pyarrow.parquet.write_table` with its defaults (nullable, dictionary-encoded
columns, row groups of 1,048,576 rows): 2,097,152 x 33 float32 (1x) and 8,388,608 (4x). Two rows:
1. its peak RSS at 4x the rows over the same at 1x: what the rows cost a streamed full batch (goal <= 1.15x);
2. its epoch (`epoch_timer.EpochTimer`: the step and the validation pass) at 1x over the work it stands for, measured
   in the same repeat: pyarrow reading the same columns into one numpy array (`--read`, a process of its own, the
   directory in the page cache) plus the in-memory full-batch epoch of the same command with `--data.in_memory
   true` (goal <= 1.3x);
3. `predict` with that 1x fit's checkpoint and each table as `--data.predict_path`: its peak RSS at 4x the rows over
   the same at 1x (predictions.csv written a batch at a time; each run's file deleted after it).
Every command runs as its own process, interleaved, `--repeats` times; figures are medians, ratios the median of
each repeat's ratio.

Usage: `python benchmarks/streamed_full_batch.py --repeats 3` (a few minutes; writes 1.5 GB of Parquet to a
temporary directory). `make bench` runs it.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench import HERE, MIB, ROOT, epoch_seconds, peak_rss, read_seconds, run

N, D = 2_097_152, 32
GROUP_ROWS = 1 << 20  # pyarrow.parquet.write_table's default row group: min(table rows, 1024 * 1024)
COMMAND = [
    *("-m", "lit_linreg", "fit", "--config", "configs/table.yaml", "--data.targets", "[y]"),
    *("--trainer.max_epochs", "1", "--reference.stop_at_relative_gap", "null"),
    *("--reference.stop_when_stalled", "null", "--trainer.enable_progress_bar", "false"),
    *("--trainer.callbacks+=epoch_timer.EpochTimer", "--trainer.callbacks+=epoch_timer.PeakMemory"),
]

PREDICT = [  # the same table config, predicting from a checkpoint
    *("-m", "lit_linreg", "predict", "--config", "configs/table.yaml", "--data.targets", "[y]"),
    *("--trainer.enable_progress_bar", "false", "--trainer.callbacks+=epoch_timer.PeakMemory"),
]


def read_into_numpy(directory: str) -> None:
    """Prints `READ_SECONDS s`: pyarrow reading the table's 33 columns into one (N, 33) float32 numpy array."""
    import numpy as np
    import pyarrow.parquet as pq

    start = time.perf_counter()
    table = pq.read_table(directory, columns=[*(f"x{j}" for j in range(D)), "y"])
    rows = np.stack([column.to_numpy() for column in table.columns], axis=1)
    print(f"READ_SECONDS {time.perf_counter() - start} {rows.shape}")


def repeat(env: dict[str, str], tables: dict[str, str], scratch: str) -> dict[str, float]:
    """One run of each command: the streamed fit at 1x and 4x, the in-memory fit and the read at 1x."""
    figures = {}
    for name, table, in_memory in (("stream", "1x", "false"), ("stream_4x", "4x", "false"), ("memory", "1x", "true")):
        root = ["--trainer.default_root_dir", f"{scratch}/{name}"]
        out = run([*COMMAND, *root, "--data.path", tables[table], "--data.in_memory", in_memory], env)[2]
        figures[f"{name}_epoch"], figures[f"{name}_rss"] = epoch_seconds(out), peak_rss(out)
    figures["read"] = read_seconds(run([__file__, "--read", tables["1x"]], env)[2])
    checkpoint = sorted(glob.glob(f"{scratch}/stream/lightning_logs/*/checkpoints/last.ckpt"))[-1]
    for name, table in (("predict", "1x"), ("predict_4x", "4x")):
        root = ["--trainer.default_root_dir", f"{scratch}/{name}", "--trainer.logger", "false"]
        own = ["--data.path", tables["1x"], "--ckpt_path", checkpoint, "--data.predict_path", tables[table]]
        out = run([*PREDICT, *root, *own], env)[2]
        figures[f"{name}_rss"] = peak_rss(out)
        shutil.rmtree(f"{scratch}/{name}")  # predictions.csv: 0.8 GB at 1x
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--read", metavar="DIR", help=argparse.SUPPRESS)  # the baseline's read, in its own process
    args = parser.parse_args()
    if args.read:
        return read_into_numpy(args.read)
    path = [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]  # this checkout, and epoch_timer
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, path))}
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        tables = {"1x": f"{scratch}/1x", "4x": f"{scratch}/4x"}
        for name, rows in (("1x", N), ("4x", 4 * N)):
            writer = ["--writer", "pyarrow", "--rows-per-group", str(GROUP_ROWS), "--rows-per-file", str(GROUP_ROWS)]
            run([str(HERE / "write_parquet.py"), tables[name], "--n-samples", str(rows), *writer], env)
        for i in range(args.repeats):
            runs.append(repeat(env, tables, scratch))
            print(f"repeat {i + 1}/{args.repeats}: {runs[-1]}", file=sys.stderr, flush=True)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    flat = statistics.median(r["stream_4x_rss"] / r["stream_rss"] for r in runs)
    speed = statistics.median(r["stream_epoch"] / (r["read"] + r["memory_epoch"]) for r in runs)
    baseline = median("read") + median("memory_epoch")
    print(f"\nStreamed full batch, configs/table.yaml: {N:,} x {D + 1} float32 (1x), pyarrow's default files;")
    print(f"medians of {args.repeats} interleaved runs, {os.cpu_count()} CPUs.\n")
    print("| measure | streamed | baseline | ratio | goal | met |\n|---|---|---|---|---|---|")
    print(
        f"| peak RSS MiB at 4x the rows; baseline: at 1x | {median('stream_4x_rss') / MIB:.0f} |"
        f" {median('stream_rss') / MIB:.0f} | {flat:.2f}x | <= 1.15x | {'yes' if flat <= 1.15 else 'no'} |"
    )
    print(
        f"| s, the epoch at 1x; baseline: pyarrow reading it into numpy ({median('read'):.2f} s) + the in-memory"
        f" epoch ({median('memory_epoch'):.2f} s) | {median('stream_epoch'):.2f} | {baseline:.2f} | {speed:.2f}x |"
        f" <= 1.3x | {'yes' if speed <= 1.3 else 'no'} |"
    )
    flat = statistics.median(r["predict_4x_rss"] / r["predict_rss"] for r in runs)
    print(
        f"| predict's peak RSS MiB at 4x the rows; baseline: at 1x | {median('predict_4x_rss') / MIB:.0f} |"
        f" {median('predict_rss') / MIB:.0f} | {flat:.2f}x | <= 1.15x | {'yes' if flat <= 1.15 else 'no'} |"
    )


if __name__ == "__main__":
    main()
