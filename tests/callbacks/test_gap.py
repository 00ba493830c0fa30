"""The relative gap, (train MSE - optimum MSE) / optimum MSE, on nearly exact tables: what the table config stops at.

Each test writes a table, trains `configs/table.yaml` on every row of it and computes both MSEs itself, in float64
from the file's values: the fit's from its coefficients in coefficients.csv, the optimum's from numpy's lstsq.
"""

import csv
import re

import numpy as np
import pytest

from tests.conftest import config, latest_version

FLOAT32_EPS, FLOAT64_EPS = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


def write(path, columns: dict[str, np.ndarray]) -> None:
    """A CSV of the columns, every value in 17 significant digits (it reads back as the same float64)."""
    rows = np.column_stack(list(columns.values()))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([list(columns), *([repr(float(v)) for v in row] for row in rows)])


def fit(run_cli, capsys, tmp_path, columns: dict[str, np.ndarray], *args: str) -> dict:
    """Train the table config on every row of `columns` (target y); what it printed, and both MSEs computed here."""
    tmp_path.mkdir(exist_ok=True)
    write(tmp_path / "t.csv", columns)
    data = ("--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y]", "--data.val_fraction", "0")
    assert run_cli("fit", "--config", config("table.yaml"), *data, *args, root=tmp_path / "runs") == 0
    out = capsys.readouterr().out
    with open(latest_version(tmp_path / "runs") / "coefficients.csv") as f:
        fitted = {row["term"]: float(row["sgd"]) for row in csv.DictReader(f)}
    x = np.column_stack([v for k, v in columns.items() if k != "y"])  # (N, d)
    y = columns["y"]
    weight = np.array([fitted[k] for k in columns if k != "y"])
    design = np.column_stack([np.ones(len(x)), x])
    exact, *_ = np.linalg.lstsq(design, y, rcond=None)
    gap = re.search(r"^relative gap (\S+) after (\d+) epochs", out, re.MULTILINE)
    table = re.search(r"^train MSE +(\S+) +(\S+)$", out, re.MULTILINE)
    return {
        "out": out,
        "train": float(np.mean(np.square(x @ weight + fitted["(intercept)"] - y))),
        "optimum": float(np.mean(np.square(design @ exact - y))),
        "gap": float(gap[1]),
        "epochs": int(gap[2]),
        "table": (float(table[1]), float(table[2])),
        "scale": float(np.sqrt(np.mean(y**2)) + abs(exact[0]) + np.abs(exact[1:]) @ np.sqrt(np.mean(x**2, axis=0))),
        "r2": 1 - np.mean(np.square(design @ exact - y)) / np.var(y),
    }


def assert_converged(run: dict) -> None:
    """The fit is within 0.1 % of the optimum's train MSE, and every number printed about it says the same."""
    strict = run["train"] / run["optimum"] - 1
    assert strict <= 1e-3, run["out"]
    assert run["gap"] == pytest.approx(strict, rel=5e-3, abs=1e-7)  # the printed gap is this one, to rounding
    fit_column, least_squares = run["table"]  # the end-of-fit table agrees with least squares to 3 digits
    assert f"{fit_column:.3g}" == f"{least_squares:.3g}" and least_squares == pytest.approx(run["optimum"], rel=1e-5)
    assert "did not converge" not in run["out"] and "floor" not in run["out"]


def test_a_macro_style_table_with_r2_above_0_9999_stops_within_0_1_percent_of_the_optimum(run_cli, capsys, tmp_path):
    # Quarterly series that trend together, as macrodata's do: nearly collinear, and y nearly exact on them.
    rng = np.random.default_rng(0)
    t = np.arange(160.0)
    trend = 3000 * np.exp(t / 80)
    columns = {
        "cons": 0.65 * trend + 20 * rng.standard_normal(160),
        "inv": 0.15 * trend + 30 * rng.standard_normal(160),
        "govt": 0.2 * trend + 10 * rng.standard_normal(160),
        "pop": 180 + 0.6 * t + 0.1 * rng.standard_normal(160),
        "unemp": 6 + np.sin(t / 9) + 0.2 * rng.standard_normal(160),
    }
    columns["y"] = columns["cons"] + columns["inv"] + columns["govt"] - 40 * columns["unemp"]
    columns["y"] += 5 * columns["pop"] + 25 * rng.standard_normal(160)
    run = fit(run_cli, capsys, tmp_path, columns)
    assert run["r2"] > 0.9999  # where the targets' variance once stood in for the optimum's MSE
    assert_converged(run)
    assert run["epochs"] <= 6  # each whitened epoch leaves 1 % of the MSE gap


def test_a_table_with_a_large_mean_and_a_small_spread_stops_within_0_1_percent(run_cli, capsys, tmp_path):
    rng = np.random.default_rng(1)
    columns = {f"x{j}": 1000.0 * (j + 1) + rng.standard_normal(200) for j in range(3)}
    columns["y"] = 5e4 + 2 * columns["x0"] - columns["x1"] + 0.5 * columns["x2"] + 0.05 * rng.standard_normal(200)
    run = fit(run_cli, capsys, tmp_path, columns)
    assert run["r2"] > 0.999 and np.mean(columns["y"]) > 1e4 * np.std(columns["y"])
    assert (FLOAT32_EPS * run["scale"]) ** 2 < run["optimum"]  # float32 rows resolve this optimum
    assert_converged(run)


def test_refining_goes_on_only_while_an_epoch_halves_the_gap(run_cli, capsys, tmp_path):
    # The large-mean table's float32 rows hold its gap near 3e-5, above the 1e-5 refining aims at: the run stops
    # the epoch the gap no longer halves, not 10 epochs later by the stall rule, and says it converged.
    rng = np.random.default_rng(1)
    columns = {f"x{j}": 1000.0 * (j + 1) + rng.standard_normal(200) for j in range(3)}
    columns["y"] = 5e4 + 2 * columns["x0"] - columns["x1"] + 0.5 * columns["x2"] + 0.05 * rng.standard_normal(200)
    plain = fit(run_cli, capsys, tmp_path / "plain", columns, "--reference.refine_to_relative_gap", "null")
    refined = fit(run_cli, capsys, tmp_path / "refined", columns)
    assert_converged(plain)
    assert_converged(refined)
    assert plain["epochs"] < refined["epochs"] <= plain["epochs"] + 3 and refined["gap"] < plain["gap"]


def test_an_exact_polynomial_stops_at_the_float32_floor_and_says_so(run_cli, capsys, tmp_path):
    x = np.linspace(-1.0, 1.0, 51)
    columns = {"x": x, "x2": x**2, "x3": x**3, "y": 1 + 2 * x - 3 * x**2 + 0.5 * x**3}
    run = fit(run_cli, capsys, tmp_path, columns)
    floor = (FLOAT32_EPS * run["scale"]) ** 2  # eps times the rows' scale, squared: what float32 rows resolve
    assert run["optimum"] < 1e-25 < floor
    said = re.search(r"^relative gap: over the float32 floor (\S+), not over the optimum's MSE", run["out"], re.M)
    assert float(said[1]) == pytest.approx(floor, rel=1e-2)
    assert run["train"] - run["optimum"] <= floor  # as close as float32 rows resolve
    assert run["gap"] == pytest.approx((run["train"] - run["optimum"]) / floor, rel=5e-3)
    assert re.search(
        r"^reached the float32 floor: train MSE \S+, the optimum's \S+, within the \S+ that float32", run["out"], re.M
    )
    assert "--trainer.precision 64-true gets closer" in run["out"] and run["epochs"] <= 20


def test_an_exact_polynomial_in_float64_gets_closer_than_float32(run_cli, capsys, tmp_path):
    x = np.linspace(-1.0, 1.0, 51)
    columns = {"x": x, "x2": x**2, "x3": x**3, "y": 1 + 2 * x - 3 * x**2 + 0.5 * x**3}
    run = fit(run_cli, capsys, tmp_path, columns, "--trainer.precision", "64-true")
    floor = (FLOAT64_EPS * run["scale"]) ** 2
    said = re.search(r"^relative gap: over the float64 floor (\S+),", run["out"], re.M)
    assert float(said[1]) == pytest.approx(floor, rel=1e-2)
    assert run["train"] - run["optimum"] <= floor and "reached the float64 floor" in run["out"]


def test_wampler1_says_which_float32_floor_it_stopped_at_and_float64_rows_get_closer(run_cli, capsys, tmp_path):
    from tests.statistics.test_statistics import nist

    *_, x, y = nist("Wampler1")  # y = 1 + x + ... + x^5 exactly, x = 0..20: integers float32 holds exactly
    columns = {f"x{j}": x[:, j] for j in range(5)} | {"y": y}
    runs = [fit(run_cli, capsys, tmp_path / p, columns, "--trainer.precision", p) for p in ("32-true", "64-true")]
    for run, eps, name in zip(runs, (FLOAT32_EPS, FLOAT64_EPS), ("float32", "float64"), strict=True):
        floor = (eps * run["scale"]) ** 2
        line = re.search(rf"^did not converge: the fit stopped at its {name} floor, train MSE (\S+),", run["out"], re.M)
        assert float(line[1]) == pytest.approx(run["train"], rel=1e-4)  # the MSE it stopped at, as computed here
        assert run["gap"] == pytest.approx((run["train"] - run["optimum"]) / floor, rel=1e-2) and run["gap"] > 1
        assert run["epochs"] <= 40  # stalled: 10 epochs without a 1 % gain
    assert "--trainer.precision 64-true gets closer" in runs[0]["out"]
    assert runs[1]["train"] < 1e-12 * runs[0]["train"]  # float64 rows get 1e17 times closer
