"""Time and measure the exact least-squares reference on wide data against one QR of the same matrix.

The reference is what `LeastSquaresReference` computes from the training rows over a fit: the statistics pass
(`SufficientStatistics.update` on blocks of 2^22 values, as `InMemoryDataModule` feeds them), `solve`,
`diagnose` and `summarize`. Its baseline is one `numpy.linalg.qr(A, mode="r")` of the same matrix
A = [X, y], 16,384 x 2,047 by default: R alone, about 0.14 TFLOP, the least that least squares by QR costs.

Each measurement runs in a process of its own, the reference and the QR alternating, and each figure is the
median of `--repeats` runs; a ratio is the median over the repeats of the ratio between two runs made back to
back, so a slow spell of a shared machine falls on both. Memory is a process's peak RSS minus its RSS just
before it makes the matrix (numpy, scipy and their BLAS loaded, with their work buffers), over the matrix's
bytes: the matrix itself counts 1.0x.

Usage: `python benchmarks/wide.py --repeats 3` (part of `make bench`); `--rows` and `--features` change the
size. `--run reference` or `--run qr` is one measurement, which prints a `WIDE {...}` line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BLOCK_VALUES = 1 << 22  # values of [X, y] per statistics update, as InMemoryDataModule feeds them
MIB = 2**20


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes."""
    kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib


def current_rss() -> int:
    """This process's resident memory now, in bytes (Linux); the peak so far elsewhere."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def warm_up() -> None:
    """Loads what the runs use and lets numpy's and scipy's BLAS make their work buffers (tens of MiB that stay
    resident in any process that multiplies large matrices, whatever the data), then lets their inputs go."""
    from scipy.linalg import lapack

    from lit_linreg import statistics as lstsq

    warm = make_matrix(64, 8, seed=1)
    lstsq.summarize(lstsq.SufficientStatistics(8, 1).update(warm[:, :8], warm[:, 8:]))
    np.linalg.qr(warm, mode="r")
    a = np.ones((1024, 2048))
    a.T @ a
    lapack.dtpqrt(0, 64, np.zeros((2048, 2048), order="F"), np.asfortranarray(a), overwrite_a=1, overwrite_b=1)


def make_matrix(rows: int, features: int, seed: int = 0) -> np.ndarray:
    """A = [X, y] (rows, features + 1) float64, made in place a few rows at a time (no temporary of its size).

    Features of different means and scales; y a linear function of them plus noise, with R^2 about 0.5.
    """
    rng = np.random.default_rng(seed)
    matrix = np.empty((rows, features + 1))
    scale, mean = rng.uniform(0.5, 2.0, features), rng.uniform(-3.0, 3.0, features)
    weight = rng.standard_normal(features) / scale / np.sqrt(features)
    for start in range(0, rows, 512):
        x = rng.standard_normal((min(512, rows - start), features)) * scale + mean
        matrix[start : start + len(x), :features] = x
        matrix[start : start + len(x), features] = (x - mean) @ weight + rng.standard_normal(len(x))
    return matrix


def reference(matrix: np.ndarray) -> tuple[float, object]:
    """The reference's work on A = [X, y]: its seconds and its least-squares fit."""
    from lit_linreg import statistics as lstsq

    d = matrix.shape[1] - 1
    rows = max(1, BLOCK_VALUES // matrix.shape[1])
    start = time.perf_counter()
    stats = lstsq.SufficientStatistics(d, 1, lstsq.choose_method(len(matrix), 1 + matrix.shape[1]))
    for i in range(0, len(matrix), rows):
        stats.update(matrix[i : i + rows, :d], matrix[i : i + rows, d:])
    fit = lstsq.solve(stats)
    lstsq.diagnose(stats, 1, True)
    lstsq.summarize(stats)
    return time.perf_counter() - start, fit


def normal_residual(matrix: np.ndarray, weight: np.ndarray, bias: float) -> float:
    """||[1, X]'r|| / (||[1, X]|| ||r||) of the residual r = y - X w - b: about 1e-16 at the least-squares solution."""
    x, y = matrix[:, :-1], matrix[:, -1]
    residual = y - x @ weight - bias
    gradient = np.append(residual.sum(), residual @ x)
    return float(np.linalg.norm(gradient) / (np.sqrt(len(x) + np.einsum("ij,ij->", x, x)) * np.linalg.norm(residual)))


def measure(what: str, rows: int, features: int) -> dict:
    """One measurement in this process: warm up, note the RSS, make the matrix, run `what` on it."""
    warm_up()
    before = current_rss()
    matrix = make_matrix(rows, features)
    if what == "qr":
        start = time.perf_counter()
        np.linalg.qr(matrix, mode="r")
        return {"seconds": time.perf_counter() - start, "memory": (peak_rss() - before) / matrix.nbytes}
    seconds, fit = reference(matrix)
    memory = (peak_rss() - before) / matrix.nbytes  # before the check below, which needs memory of its own
    residual = normal_residual(matrix, fit.weight[0], fit.bias[0])
    return {"seconds": seconds, "memory": memory, "residual": residual}


def run(what: str, rows: int, features: int, threads: int | None) -> dict:
    """`measure` in a fresh process: its figures."""
    command = [sys.executable, __file__, "--run", what, "--rows", str(rows), "--features", str(features)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if threads:  # numpy's and scipy's OpenBLAS read the first; other BLAS builds the second
        env |= {"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"exit {out.returncode}: {' '.join(command)}\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("WIDE "))[5:])


def table(runs: list[tuple[dict, dict]], rows: int, features: int) -> str:
    """The markdown rows: the medians of both, the median of the repeats' ratios, the target and whether it is met."""

    def median(side: int, key: str) -> float:
        return statistics.median(run[side][key] for run in runs)

    seconds = statistics.median(ours["seconds"] / qr["seconds"] for ours, qr in runs)
    memory = median(0, "memory")
    size, mib = f"{rows:,} x {features:,}", rows * (features + 1) * 8 / MIB
    return "\n".join(
        [
            "| what | lit_linreg | baseline | ratio | target | met |",
            "|---|---|---|---|---|---|",
            f"| wide reference ({size}: pass, solve, diagnose, summarize), s; baseline: numpy.linalg.qr, mode r"
            f" | {median(0, 'seconds'):.2f} | {median(1, 'seconds'):.2f} | {seconds:.2f}x | <= 3x | {seconds <= 3} |",
            f"| wide reference ({size}), peak RSS over the matrix's {mib:.0f} MiB (the matrix counts 1.0x);"
            f" baseline: the QR's | {memory:.2f}x | {median(1, 'memory'):.2f}x | {memory:.2f}x | <= 1.5x"
            f" | {memory <= 1.5} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; figures are their medians")
    parser.add_argument("--rows", type=int, default=16_384)
    parser.add_argument("--features", type=int, default=2_046)
    parser.add_argument("--threads", type=int, help="BLAS threads of every run (default: BLAS's choice)")
    parser.add_argument("--run", choices=["reference", "qr"], help="make one measurement in this process")
    args = parser.parse_args()
    if args.run:
        print("WIDE " + json.dumps(measure(args.run, args.rows, args.features)))
        return
    runs = []
    for i in range(args.repeats):
        runs.append(tuple(run(what, args.rows, args.features, args.threads) for what in ("reference", "qr")))
        ours, qr = runs[-1]
        print(
            f"repeat {i + 1}/{args.repeats}: reference {ours['seconds']:.2f} s (memory"
            f" {ours['memory']:.2f}x, normal-equations residual {ours['residual']:.1e}), QR {qr['seconds']:.2f} s"
            f" (memory {qr['memory']:.2f}x)",
            file=sys.stderr,
            flush=True,
        )
    print(f"\nMachine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()},", end=" ")
    print(f"numpy {np.__version__}, BLAS threads: {args.threads or 'default'}. Figures: medians of", end=" ")
    print(f"{args.repeats} alternating runs.\n")
    print(table(runs, args.rows, args.features))


if __name__ == "__main__":
    main()
