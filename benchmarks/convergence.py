"""Train the default `configs/table.yaml` on real tables and report how close SGD gets to the exact answer.

The tables ship with statsmodels (a dev dependency); each is written to a CSV file and trained with only
`--data.path` and `--data.targets`, as a user would. For each: rows, features, the condition number of the
standardized problem, the epochs run, the final `optimum/relative_gap` and the wall time of the whole process.

Usage: `python benchmarks/convergence.py` (about a minute per table at most).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tables(scratch: Path) -> list[tuple[str, Path, str]]:
    """(name, CSV path, target) for each real table."""
    from statsmodels import datasets

    out = []
    longley = datasets.longley.load_pandas().data
    longley.to_csv(scratch / "longley.csv", index=False)
    out.append(("Longley employment (statsmodels)", scratch / "longley.csv", "TOTEMP"))
    star = datasets.star98.load_pandas().data
    star.to_csv(scratch / "star98.csv", index=False)
    out.append(("star98 schools (statsmodels)", scratch / "star98.csv", "NABOVE"))
    macro = datasets.macrodata.load_pandas().data.drop(columns=["year", "quarter"])
    macro.to_csv(scratch / "macro.csv", index=False)
    out.append(("US macro quarterly (statsmodels)", scratch / "macro.csv", "realgdp"))
    for name in ("stackloss", "copper", "cpunish"):
        frame = getattr(datasets, name).load_pandas().data
        frame.to_csv(scratch / f"{name}.csv", index=False)
        out.append((f"{name} (statsmodels)", scratch / f"{name}.csv", frame.columns[0]))
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        print("| table | rows x features | condition number | epochs | relative gap | seconds |")
        print("|---|---|---|---|---|---|")
        for name, path, target in tables(scratch):
            cmd = [sys.executable, "-m", "lit_linreg", "fit", "--config", "configs/table.yaml"]
            cmd += ["--data.path", str(path), "--data.targets", f"[{target}]", "--trainer.enable_progress_bar", "false"]
            cmd += ["--trainer.default_root_dir", str(scratch / "runs")]
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            text = done.stdout + done.stderr
            if done.returncode != 0:
                print(f"| {name} | failed: {text.strip().splitlines()[-1]} |||||")
                continue
            cond = re.search(r"condition number ([\d.e+]+)", text).group(1)
            gap = re.search(r"relative gap (\S+) after (\d+) epochs, (\d+) training rows x (\d+) columns", text)
            print(f"| {name} | {gap[3]} x {gap[4]} | {cond} | {gap[2]} | {float(gap[1]):.2g} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
