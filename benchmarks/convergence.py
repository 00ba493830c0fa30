"""Train the default `configs/table.yaml` on real tables: epochs and seconds to within 0.001 of the exact answer.

Each table is written to a CSV file and trained with only `--data.path` and `--data.targets`, as a user would:
the config's `--model.precondition qr` against the baseline of the same config without it (`none`, and
validation every 25 epochs, as the config was before qr). The tables: six that statsmodels ships, statsmodels'
macrodata with every column (year and quarter too), and NIST's Wampler5, Filip and Wampler1 as tables (y on x,
x^2, ..., x^5 and x^10; Wampler1's y is exactly its polynomial, so it is trained again with float64 rows,
`--trainer.precision 64-true`). For each: training rows x features, the condition number of the standardized
problem, the epochs to a relative gap (train MSE - optimum MSE) / optimum MSE <= 0.001 (the config stops there, or
refines toward 1e-5 while an epoch still halves it; at most its 3,000), the gap reached, computed from the
end-of-fit table's two train MSEs where the run's gap is over its rows' precision floor (an exact fit; that floor
is given too), and the wall time of the whole process, start-up included: medians of `--repeats` runs, qr and
none interleaved.

Usage: `python benchmarks/convergence.py --repeats 3` (about 20 minutes on 2 cores, most of it the baseline).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_GAP, TARGET_EPOCHS, TARGET_SECONDS = 1e-3, 50, 15.0
BASELINE = ["--model.precondition", "none", "--trainer.check_val_every_n_epoch", "25"]


def tables(scratch: Path) -> list[tuple[str, Path, str, list[str]]]:
    """(name, CSV path, target, extra arguments) for each real table."""
    import pandas as pd
    from statsmodels import datasets

    out = []
    longley = datasets.longley.load_pandas().data
    longley.to_csv(scratch / "longley.csv", index=False)
    out.append(("Longley employment (statsmodels)", scratch / "longley.csv", "TOTEMP"))
    star = datasets.star98.load_pandas().data
    star.to_csv(scratch / "star98.csv", index=False)
    out.append(("star98 schools (statsmodels)", scratch / "star98.csv", "NABOVE"))
    macro = datasets.macrodata.load_pandas().data
    macro.drop(columns=["year", "quarter"]).to_csv(scratch / "macro.csv", index=False)
    out.append(("US macro quarterly (statsmodels)", scratch / "macro.csv", "realgdp"))
    for name in ("stackloss", "copper", "cpunish"):
        frame = getattr(datasets, name).load_pandas().data
        frame.to_csv(scratch / f"{name}.csv", index=False)
        out.append((f"{name} (statsmodels)", scratch / f"{name}.csv", frame.columns[0]))
    macro.to_csv(scratch / "macro_all.csv", index=False)
    out.append(("US macro, every column (statsmodels)", scratch / "macro_all.csv", "realgdp"))
    for name, degree in (("Wampler5", 5), ("Filip", 10), ("Wampler1", 5)):
        x, y = nist(ROOT / "tests" / "fixtures" / "nist" / f"{name}.dat")
        frame = pd.DataFrame({f"x{j}" if j > 1 else "x": x**j for j in range(1, degree + 1)} | {"y": y})
        frame.to_csv(scratch / f"{name}.csv", index=False, float_format="%.17g")
        out.append((f"{name}, y on x..x^{degree} (NIST)", scratch / f"{name}.csv", "y"))
    out.append(("Wampler1, float64 rows (`--trainer.precision 64-true`)", *out[-1][1:]))
    return [(*table, ["--trainer.precision", "64-true"] if "float64" in table[0] else []) for table in out]


def nist(path: Path):
    """The (x, y) columns of a NIST StRD file with one predictor, as float64 arrays."""
    import numpy as np

    lines = path.read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Data:"))
    data = np.array([[float(v) for v in line.split()] for line in lines[start + 1 :] if line.strip()])
    return data[:, 1], data[:, 0]


def fit(path: Path, target: str, scratch: Path, extra: list[str]) -> dict:
    """One whole `fit` process: its wall time, epochs, final relative gap (over the optimum's MSE), rows, columns,
    condition number, and the rows' precision floor where the run's gap was over it ("" where not)."""
    cmd = [sys.executable, "-m", "lit_linreg", "fit", "--config", "configs/table.yaml", "--data.path", str(path)]
    cmd += ["--data.targets", f"[{target}]", "--trainer.enable_progress_bar", "false", *extra]
    cmd += ["--trainer.default_root_dir", str(scratch / "runs")]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"{path.name} {' '.join(extra)} failed: {text.strip().splitlines()[-1]}")
    cond = re.search(r"standardized problem: condition number (\S+),", text)[1]
    gap = re.search(r"relative gap (\S+) after (\d+) epochs, (\d+) training rows x (\d+) columns", text)
    floor = re.search(r", over the (\w+ floor \S+)", text)
    if floor:  # the gap printed is over the floor: the strict one from the end-of-fit table's train MSEs
        fitted, optimum = (float(v) for v in re.search(r"^train MSE +(\S+) +(\S+)$", text, re.MULTILINE).groups())
        strict, mse = (fitted - optimum) / optimum, fitted
        at_floor = re.search(r"^(reached the \w+ floor|did not converge: the fit stopped at its \w+ floor)", text, re.M)
    shape = f"{gap[3]} x {gap[4]}"
    return {
        "seconds": seconds,
        "gap": strict if floor else float(gap[1]),
        "floor": f"train MSE {mse:.3g}, over its {floor[1]}" if floor else "",
        "at_floor": bool(floor and at_floor),  # the run said it stopped at its floor (not out of epochs)
        "epochs": int(gap[2]),
        "shape": shape,
        "cond": cond,
    }


def cell(runs: list[dict]) -> str:
    """'N epochs, S s, gap G', saying whether the median run reached the target gap, or the floor it stopped at."""
    epochs, seconds = statistics.median(r["epochs"] for r in runs), statistics.median(r["seconds"] for r in runs)
    gap = statistics.median(r["gap"] for r in runs)
    if runs[0]["floor"]:
        reached = f": {'stopped' if runs[0]['at_floor'] else 'not reached, ended'} at {runs[0]['floor']}"
    else:
        reached = "" if gap <= TARGET_GAP else ": not reached"
    return f"{epochs:.0f} epochs, {seconds:.1f} s, gap {gap:.2g}{reached}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command; figures are their medians")
    parser.add_argument("--only", nargs="*", default=[], help="the tables whose name contains one of these words")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        print(f"{args.repeats} interleaved runs each; ratio: the median over the repeats of qr / none seconds.\n")
        print("| table (train rows x features, condition number) | lit_linreg: qr | baseline: none | ratio |", end="")
        print(" target | met |")
        print("|---|---|---|---|---|---|")
        for name, path, target, extra in tables(scratch):
            if args.only and not any(word.lower() in name.lower() for word in args.only):
                continue
            runs = {"qr": [], "none": []}
            for _ in range(args.repeats):
                runs["qr"].append(fit(path, target, scratch, extra))
                runs["none"].append(fit(path, target, scratch, [*extra, *BASELINE]))
            qr, first = runs["qr"], runs["qr"][0]
            ratio = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(qr, runs["none"], strict=True))
            # Met: within the target gap, or stopped at the floor of rows that cannot resolve the optimum, saying so.
            met = all((r["gap"] <= TARGET_GAP or r["at_floor"]) and r["epochs"] < TARGET_EPOCHS for r in qr)
            met = met and statistics.median(r["seconds"] for r in qr) < TARGET_SECONDS
            what = f"{name} ({first['shape']}, {float(first['cond']):.3g})"
            target_text = f"<= {TARGET_GAP:g} in < {TARGET_EPOCHS} epochs, < {TARGET_SECONDS:g} s"
            print(
                f"| {what} | {cell(qr)} | {cell(runs['none'])} | {ratio:.2f}x | {target_text} |"
                f" {'yes' if met else 'no'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
