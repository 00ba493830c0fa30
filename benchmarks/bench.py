"""Benchmark lit_linreg against plain PyTorch and plain Lightning; prints one markdown table.

Every command runs as its own process, the way a user runs it, and every figure is the median of
`--repeats` runs. The runs are interleaved, one of each command per repeat, so a slow spell on a
shared machine falls on lit_linreg and its baseline alike; each ratio is the median over the repeats
of the ratio between two runs made back to back.

1. Seconds per epoch on 2,097,152 x 32 float32 rows in batches of 8192 (configs/synthetic.yaml):
   `python -m lit_linreg fit --config configs/synthetic.yaml`, with `epoch_timer.EpochTimer` added on
   the command line. It times each epoch from its start to the next one's, so an epoch holds all that
   `fit` does per epoch (training steps, validation, checkpoints, callbacks) and nothing it does once
   (imports, making the data, the least-squares pass, the figure); a run's figure is the median of its
   epochs. Baselines: `hand_loop.py`, plain PyTorch on the same rows, and `naive_lightning.py`,
   TensorDataset + DataLoader, run on 131,072 rows and scaled linearly (a full-size epoch takes minutes).
2. Peak memory: ru_maxrss of that fit against the same command on 1,024 rows. The difference is what
   the data costs; the target allows 1.5x the bytes of the rows, N * (D + 1) * 4.
3. Start-up: whole-process wall time of `fit --config configs/toy.yaml` (100 one-step epochs) against
   `minimal_lightning.py`, the same training in a ~30-line Lightning script.
4. Reading a 1,000,000 x 32 numeric CSV (`read_table.py`): lit_linreg's pyarrow reader, every column as
   float64, against numpy's `loadtxt` into float32, the reader it replaced; the read alone, imports excluded.
5. Lightning's floor: the synthetic fit's epoch against a bare LightningModule with no logger, checkpoints or
   validation (`bare_lightning.py`'s), fed the same in-memory batches. `epoch_timer.InterleavedBare` trains it
   for one epoch between each two of the fit's, in the fit's process and on its tensors, so both meet the same
   spells of a shared machine. And the whole synthetic fit process against the whole `hand_loop.py` process
   (the same data made, the same 5 epochs).
6. Streaming: the same rows written as a Parquet directory (`write_parquet.py`, row groups of 65,536, as
   `lit_linreg.tables.convert` writes them), trained by `TableDataModule` with `--data.in_memory false` against
   `--data.in_memory true` (epoch time, the directory in the page cache); the same streamed from a copy whose
   columns are all declared nullable, as pandas writes them; and the streamed fit's peak RSS on 4x the rows
   against 1x.
7. DDP memory: the largest per-rank peak RSS of the synthetic fit on 2 CPU processes against the same on
   1,024 rows, over the data's bytes (each rank makes only its share).
8. A user's own Parquet table (`table` group): the same rows written by `pyarrow.parquet.write_table` with its
   defaults (nullable columns, dictionary encoding), by pandas' `to_parquet`, and by `lit_linreg.tables.convert`, in 8
   files of 262,144 rows and row groups of 65,536, trained by `fit --config configs/table.yaml --trainer.max_epochs
   1` (full batch): peak RSS in memory against the same on 8,192 rows, over the data's bytes; the largest per-rank
   peak under DDP on 2 CPU processes; and the peak streaming (batch 8192) the table against a quarter of it.

Usage: `make bench`, or `python benchmarks/bench.py --repeats 5`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N, D = 2_097_152, 32  # configs/synthetic.yaml
N_NAIVE = 131_072  # rows the naive recipe runs on; its epoch time is scaled by N / N_NAIVE
N_SMALL = 1024  # rows of the memory baseline
DATA_BYTES = N * (D + 1) * 4  # x and y, float32
MIB = 2**20


def run(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, int, str]:
    """Run `python ARGS` in a fresh process; return its wall seconds, peak RSS in bytes and output."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        # os.wait4, not proc.wait: it gives this child's own rusage (RUSAGE_CHILDREN is a max over all children).
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"exit {proc.returncode}: python {' '.join(args)}\n{text[-3000:]}")
    kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    return seconds, usage.ru_maxrss * kib, text


def epoch_list(output: str, name: str = "EPOCH_SECONDS") -> list[float]:
    """The epoch times in the `EPOCH_SECONDS [...]` (or `name`) line of a run's output."""
    # Searched for, not read line by line: the progress bar shares the stream and ends without a newline.
    return json.loads(re.search(name + r" (\[.*?\])", output).group(1))


def epoch_seconds(output: str) -> float:
    """The median epoch time in the `EPOCH_SECONDS [...]` line of a run's output."""
    return statistics.median(epoch_list(output))


def read_seconds(output: str) -> float:
    return float(re.search(r"READ_SECONDS (\S+)", output).group(1))


def peak_rss(output: str) -> int:
    """The largest `PEAK_RSS rank bytes` of a run's ranks."""
    found = re.findall(r"PEAK_RSS \d+ (\d+)", output)
    if not found:
        sys.exit(f"no PEAK_RSS line in the output:\n{output[-3000:]}")
    return max(int(b) for b in found)


GROUPS = ("epoch", "floor", "startup", "read", "stream", "ddp", "table")  # --only picks among these
TABLE_SMALL = 8192  # rows of the baseline of a user's Parquet table read into memory
TABLES = {  # the `table` group's Parquet directories: name -> (rows, write_parquet.py options)
    "pyarrow": (N, ["--writer", "pyarrow", "--rows-per-file", "262144"]),
    "pyarrow_small": (TABLE_SMALL, ["--writer", "pyarrow", "--rows-per-group", "1024"]),  # a group for each rank
    "pyarrow_quarter": (N // 4, ["--writer", "pyarrow", "--rows-per-file", "262144"]),
    "pandas": (N, ["--writer", "pandas", "--rows-per-file", "262144"]),
    "convert": (N, ["--writer", "convert", "--rows-per-file", "262144"]),
}


def repeat(env: dict[str, str], table_csv: str, parquet: dict[str, str], groups: set[str]) -> dict[str, float]:
    """One run of every command in `groups`, baselines right after what they are compared with; the raw figures."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        fit = ["-m", "lit_linreg", "fit", "--trainer.default_root_dir"]
        synthetic = ["--config", "configs/synthetic.yaml"]
        timer = "--trainer.callbacks+=epoch_timer.EpochTimer"
        if "epoch" in groups:
            fit_wall, rss_big, out = run([*fit, f"{scratch}/big", *synthetic, timer], env)
            figures |= {"fit_epoch": epoch_seconds(out), "rss_big": rss_big, "fit_wall": fit_wall}
            figures["hand_wall"], _, out = run([str(HERE / "hand_loop.py"), "--n-samples", str(N)], env)
            figures["hand_epoch"] = epoch_seconds(out)
            out = run([str(HERE / "naive_lightning.py"), "--n-samples", str(N_NAIVE)], env, cwd=Path(scratch))[2]
            figures["naive_epoch"] = epoch_seconds(out) * N / N_NAIVE
            small = f"--data.n_samples={N_SMALL}"
            figures["rss_small"] = run([*fit, f"{scratch}/small", *synthetic, small], env)[1]
        if "floor" in groups:  # the bare module's epochs alternate with the fit's, in the fit's process
            interleaved = "--trainer.callbacks+=epoch_timer.InterleavedBare"
            out = run([*fit, f"{scratch}/floor", *synthetic, interleaved], env)[2]
            fit_epochs, bare_epochs = epoch_list(out), epoch_list(out, "BARE_SECONDS")
            figures["floor_fit_epoch"], figures["bare_epoch"] = map(statistics.median, (fit_epochs, bare_epochs))
            # Each fit epoch over the bare one just before it: the pairs meet the same spells of the machine.
            figures["floor"] = statistics.median(f / b for f, b in zip(fit_epochs, bare_epochs, strict=True))
        if "stream" in groups:
            table = ["--config", "configs/table.yaml", "--data.targets", "[y]", "--data.batch_size", "8192"]
            table += ["--model.lr", "0.1", "--model.momentum", "0", "--reference.stop_at_relative_gap", "null"]
            table += ["--trainer.max_epochs", "5", "--trainer.log_every_n_steps", "50", timer]
            table += ["--trainer.callbacks+=epoch_timer.PeakMemory", "--trainer.enable_progress_bar", "false"]
            for name, rows, in_memory in (
                ("stream", "big", "false"),
                ("memory", "big", "true"),
                ("stream_small", "small", "false"),
                ("stream_nullable", "nullable", "false"),
            ):
                path = ["--data.path", parquet[rows], "--data.in_memory", in_memory]
                out = run([*fit, f"{scratch}/{name}", *table, *path], env)[2]
                figures[f"{name}_epoch"], figures[f"{name}_rss"] = epoch_seconds(out), peak_rss(out)
        if "ddp" in groups:
            ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
            ddp += ["--trainer.callbacks+=epoch_timer.PeakMemory"]
            figures["ddp_rss_big"] = peak_rss(run([*fit, f"{scratch}/ddp", *synthetic, *ddp], env)[2])
            small = f"--data.n_samples={N_SMALL}"
            figures["ddp_rss_small"] = peak_rss(run([*fit, f"{scratch}/ddp_small", *synthetic, *ddp, small], env)[2])
        if "table" in groups:  # a user's own Parquet table, as the user trains it: configs/table.yaml
            table = ["--config", "configs/table.yaml", "--data.targets", "[y]", "--trainer.max_epochs", "1"]
            table += ["--trainer.callbacks+=epoch_timer.PeakMemory", "--trainer.enable_progress_bar", "false"]
            ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
            streamed = ["--data.in_memory", "false", "--data.batch_size", "8192", "--model.lr", "0.1"]
            streamed += ["--model.momentum", "0", "--reference.stop_at_relative_gap", "null"]
            for name, rows, options in (
                ("table_small", "pyarrow_small", []),
                ("table_pyarrow", "pyarrow", []),
                ("table_pandas", "pandas", []),
                ("table_convert", "convert", []),
                ("table_ddp_small", "pyarrow_small", ddp),
                ("table_ddp", "pyarrow", ddp),
                ("table_stream_small", "pyarrow_quarter", streamed),
                ("table_stream", "pyarrow", streamed),
            ):
                out = run([*fit, f"{scratch}/{name}", *table, "--data.path", parquet[rows], *options], env)[2]
                figures[f"{name}_rss"] = peak_rss(out)
        if "startup" in groups:
            figures["toy_wall"] = run([*fit, f"{scratch}/toy", "--config", "configs/toy.yaml"], env)[0]
            figures["minimal_wall"] = run([str(HERE / "minimal_lightning.py")], env, cwd=Path(scratch))[0]
            frozen = [str(HERE / "minimal_lightning.py"), "--gc-as-lit-linreg"]
            figures["minimal_frozen_wall"] = run(frozen, env, cwd=Path(scratch))[0]
        if "read" in groups:
            reader = [str(HERE / "read_table.py"), table_csv, "--reader"]
            figures["read_lit_linreg"] = read_seconds(run([*reader, "lit_linreg"], env)[2])
            figures["read_numpy"] = read_seconds(run([*reader, "numpy"], env)[2])
    return figures


def table(runs: list[dict[str, float]]) -> str:
    """The markdown table of the groups run: the median of each figure, and the median of each repeat's ratio."""

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def ratio(key: str, baseline: str, extra: str | None = None) -> float:
        """The median over the repeats of key / baseline, or of (key - baseline) / DATA_BYTES given `extra`."""
        if extra is not None:
            return statistics.median((r[key] - r[baseline]) / DATA_BYTES for r in runs)
        return statistics.median(r[key] / r[baseline] for r in runs)

    def row(
        measure: str, ours: float, baseline: float, value: float, limit: float | None, digits: int = 3, target=None
    ):
        """A table row: the two medians, the ratio, the target (`<= limit` unless given) and whether it is met."""
        met = limit is None or value <= limit
        return measure, f"{ours:.{digits}f}", f"{baseline:.{digits}f}", f"{value:.2f}x", target or f"<= {limit}x", met

    rows = []
    if "fit_epoch" in runs[0]:
        fit, speed_up = median("fit_epoch"), ratio("naive_epoch", "fit_epoch")
        naive = f"s/epoch; baseline: TensorDataset + DataLoader, measured on {N_NAIVE:,} rows, x{N // N_NAIVE}"
        memory = f"peak RSS MiB; baseline: {N_SMALL:,} rows; ratio: extra RSS / data bytes ({DATA_BYTES / MIB:.0f} MiB)"
        whole = "whole process s, configs/synthetic.yaml; baseline: hand_loop.py, same data, same 5 epochs"
        rows += [
            row("s/epoch; baseline: hand-written PyTorch loop", fit, median("hand_epoch"),
                ratio("fit_epoch", "hand_epoch"), 1.5, target="<= 1.5x (goal 1.0x)"),
            (naive, f"{fit:.3f}", f"{median('naive_epoch'):.2f}", f"{speed_up:.1f}x faster", ">= 30x faster",
             speed_up >= 30),
            row(memory, median("rss_big") / MIB, median("rss_small") / MIB, ratio("rss_big", "rss_small", "bytes"),
                1.5, digits=0),
            row(whole, median("fit_wall"), median("hand_wall"), ratio("fit_wall", "hand_wall"), None, digits=2,
                target="as low as it goes"),
        ]  # fmt: skip
    if "floor_fit_epoch" in runs[0]:
        floor = (
            "s/epoch; baseline: a bare LightningModule fed the same batches (no logger, checkpoints, validation),"
            " its epochs alternating with the fit's in one process"
        )
        rows.append(row(floor, median("floor_fit_epoch"), median("bare_epoch"), median("floor"), 1.1))  # fmt: skip
    if "toy_wall" in runs[0]:
        start_up = "start-up s, whole process, configs/toy.yaml; baseline: minimal_lightning.py"
        rows.append(
            row(start_up, median("toy_wall"), median("minimal_wall"), ratio("toy_wall", "minimal_wall"), 1.10, 2)
        )
        # lit_linreg imports with the garbage collector off and freezes what the imports made (__main__.py); the
        # same two lines in the minimal script show what the template's own work costs, beyond that saving.
        frozen = f"{start_up} --gc-as-lit-linreg (the same collector settings)"
        rows.append(
            row(frozen, median("toy_wall"), median("minimal_frozen_wall"), ratio("toy_wall", "minimal_frozen_wall"),
                None, 2, target="as low as it goes")
        )  # fmt: skip
    if "read_lit_linreg" in runs[0]:
        read = "s to read a 1,000,000 x 32 numeric CSV; baseline: numpy.loadtxt, the reader pyarrow replaced"
        rows.append(
            row(read, median("read_lit_linreg"), median("read_numpy"), ratio("read_lit_linreg", "read_numpy"), 1.0, 2)
        )
    if "stream_epoch" in runs[0]:
        streamed = "s/epoch streamed from a Parquet directory (page cache); baseline: the same table in memory"
        flat = "peak RSS MiB streaming 4x the rows; baseline: streaming 1x (524,288 rows)"
        nullable = "s/epoch streamed, every column declared nullable (as pandas writes them); baseline: in memory"
        rows += [
            row(streamed, median("stream_epoch"), median("memory_epoch"), ratio("stream_epoch", "memory_epoch"), 1.5),
            row(nullable, median("stream_nullable_epoch"), median("memory_epoch"),
                ratio("stream_nullable_epoch", "memory_epoch"), None, target="as low as it goes"),
            row(flat, median("stream_rss") / MIB, median("stream_small_rss") / MIB,
                ratio("stream_rss", "stream_small_rss"), 1.15, digits=0),
        ]  # fmt: skip
    if "ddp_rss_big" in runs[0]:
        ddp = f"largest per-rank peak RSS MiB, DDP on 2 CPU processes; baseline: {N_SMALL:,} rows; ratio: extra/data"
        rows.append(row(ddp, median("ddp_rss_big") / MIB, median("ddp_rss_small") / MIB,
                        ratio("ddp_rss_big", "ddp_rss_small", "bytes"), 0.75, digits=0))  # fmt: skip
    if "table_pyarrow_rss" in runs[0]:
        small = f"baseline: {TABLE_SMALL:,} rows; ratio: extra RSS / data bytes"
        for name, who in (
            ("pyarrow", "`pyarrow.parquet.write_table`'s defaults (nullable, dictionary-encoded)"),
            ("pandas", "`DataFrame.to_parquet`'s defaults"),
            ("convert", "`lit_linreg.tables.convert`"),
        ):
            measure = f"peak RSS MiB, `fit --config configs/table.yaml` in memory, a table written by {who}; {small}"
            rows.append(row(measure, median(f"table_{name}_rss") / MIB, median("table_small_rss") / MIB,
                            ratio(f"table_{name}_rss", "table_small_rss", "bytes"), 1.5, digits=0))  # fmt: skip
        ddp = f"largest per-rank peak RSS MiB, the same (pyarrow's defaults), DDP on 2 CPU processes; {small}"
        rows.append(row(ddp, median("table_ddp_rss") / MIB, median("table_ddp_small_rss") / MIB,
                        ratio("table_ddp_rss", "table_ddp_small_rss", "bytes"), 0.75, digits=0))  # fmt: skip
        flat = f"peak RSS MiB streaming it (pyarrow's defaults, batch 8192) at 4x the rows; baseline: 1x ({N // 4:,})"
        rows.append(row(flat, median("table_stream_rss") / MIB, median("table_stream_small_rss") / MIB,
                        ratio("table_stream_rss", "table_stream_small_rss"), 1.15, digits=0))  # fmt: skip
    lines = ["| measure | lit_linreg | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row[:-1])} | {'yes' if row[-1] else 'no'} |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command; figures are their medians")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every command (default: torch's choice)")
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups to run, among {', '.join(GROUPS)} (default: all)",
    )
    args = parser.parse_args()
    groups = set(args.only.split(","))
    if not groups <= set(GROUPS):
        parser.error(
            f"--only: unknown group(s) {', '.join(sorted(groups - set(GROUPS)))}; choose among {', '.join(GROUPS)}"
        )

    # This checkout's lit_linreg for every script, and epoch_timer for the fit command's --trainer.callbacks.
    path = [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, path))}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        table_csv = f"{scratch}/table.csv"
        if "read" in groups:
            run([str(HERE / "read_table.py"), table_csv, "--write"], env)
        parquet = {rows: f"{scratch}/{rows}_parquet" for rows in ("big", "small", "nullable", *TABLES)}
        if "stream" in groups:
            run([str(HERE / "write_parquet.py"), parquet["big"], "--n-samples", str(N)], env)
            run([str(HERE / "write_parquet.py"), parquet["small"], "--n-samples", str(N // 4)], env)
            run([str(HERE / "write_parquet.py"), parquet["nullable"], "--n-samples", str(N), "--nullable"], env)
        if "table" in groups:
            for name, (rows, options) in TABLES.items():
                run([str(HERE / "write_parquet.py"), parquet[name], "--n-samples", str(rows), *options], env)
        for i in range(args.repeats):
            runs.append(repeat(env, table_csv, parquet, groups))
            figures = ", ".join(f"{key} {value:.4g}" for key, value in runs[-1].items())
            print(f"repeat {i + 1}/{args.repeats}: {figures}", file=sys.stderr, flush=True)

    print(f"\nMachine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()},", end=" ")
    print(f"torch {version('torch')}, lightning {version('lightning')}, threads: {args.threads or 'default'}")
    print(f"Data: {N:,} x {D} float32 rows, batch 8192 (configs/synthetic.yaml). Figures: medians of")
    print(f"{args.repeats} interleaved runs; ratio: the median over the repeats of lit_linreg / baseline.\n")
    print(table(runs))


if __name__ == "__main__":
    main()
