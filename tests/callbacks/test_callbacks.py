import csv
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch

from lit_linreg.callbacks import format_table
from lit_linreg.cli.main import main
from tests.conftest import QUIET, config, latest_version, scalars


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    """One finished crop-yield run (50 epochs, standardized): its version directory."""
    root = tmp_path_factory.mktemp("crop") / "runs"
    assert main(["fit", "--config", config("crop_yield.yaml"), *QUIET, "--trainer.default_root_dir", str(root)]) == 0
    return latest_version(root)


def test_coefficients_csv_matches_statsmodels_ols_when_every_row_trains(tmp_path):
    import statsmodels.api as sm
    from statsmodels.datasets import longley

    frame = longley.load_pandas().data
    frame.to_csv(tmp_path / "longley.csv", index=False)
    argv = ["fit", "--config", config("table.yaml"), "--data.path", str(tmp_path / "longley.csv")]
    argv += ["--data.targets", "[TOTEMP]", "--data.val_fraction", "0", "--trainer.max_epochs", "1"]
    assert main([*argv, *QUIET, "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    with open(latest_version(tmp_path / "runs") / "coefficients.csv") as f:
        rows = {row["term"]: row for row in csv.DictReader(f)}

    ols = sm.OLS(frame["TOTEMP"], sm.add_constant(frame.drop(columns="TOTEMP"))).fit()
    low, high = ols.conf_int().T.values
    for j, term in enumerate(ols.params.index):
        row = rows["(intercept)" if term == "const" else term]
        expected = [ols.params.iloc[j], ols.bse.iloc[j], ols.tvalues.iloc[j], ols.pvalues.iloc[j], low[j], high[j]]
        got = [float(row[c]) for c in ("least_squares", "std_error", "t", "p_value", "ci_low", "ci_high")]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert row["target"] == "TOTEMP" and np.isfinite(float(row["sgd"]))


def test_crop_run_logs_the_optimum_and_a_gap_that_falls_to_zero(crop_run):
    logged = scalars(crop_run)
    assert [v for _, v in logged["optimum/loss"]] == [pytest.approx(0.4831, abs=1e-4)]  # a constant, logged once
    assert logged["optimum/val_loss"][0][1] == pytest.approx(0.4831, abs=1e-4)  # validation reuses the 5 rows
    relative = [v for _, v in logged["optimum/relative_gap"]]
    # The optimum explains 99.96 % of the variance; the gap is still over its own MSE (float32 resolves it).
    assert relative[-1] == pytest.approx(logged["optimum/loss_gap"][-1][1] / 0.4831, rel=1e-3)
    gaps = [v for _, v in logged["optimum/loss_gap"]]
    assert min(gaps) >= -1e-5  # at least 0 up to float32 rounding
    assert gaps[0] > 100 * gaps[-1] and gaps[-1] < 0.01 * 0.4831
    weight_gaps = [v for _, v in logged["optimum/weight_gap"]]
    assert weight_gaps[-1] < 0.1 * weight_gaps[0]


def test_crop_run_logs_each_coefficient_in_original_units(crop_run):
    logged = scalars(crop_run)
    names = {tag for tag in logged if tag.startswith("weights/")}
    features, targets = ["temperature", "rainfall", "humidity"], ["apples", "oranges"]
    assert names == {f"weights/{t}/{f}" for t in targets for f in [*features, "(intercept)"]}
    assert len(logged["weights/apples/humidity"]) == 50
    # Original units: the final weights are the least-squares coefficients of the raw table (within SGD's 0.1 %).
    x = torch.tensor([[73, 67, 43], [91, 88, 64], [87, 134, 58], [102, 43, 37], [69, 96, 70.0]], dtype=torch.float64)
    y = torch.tensor([[56, 70], [81, 101], [119, 133], [22, 37], [103, 119.0]], dtype=torch.float64)
    design = torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], dim=1)
    expected_w = torch.linalg.lstsq(design, y).solution[:3].T.numpy()  # (2, 3)
    assert logged["weights/oranges/rainfall"][-1][1] == pytest.approx(expected_w[1, 1], rel=1e-3)
    assert logged["weights/apples/humidity"][-1][1] == pytest.approx(expected_w[0, 2], rel=1e-3)


def test_hp_metric_is_the_final_validation_loss(crop_run):
    logged = scalars(crop_run)
    assert logged["hp_metric"][0] == (0, -1.0)  # Lightning's placeholder, written with the hyperparameters
    assert logged["hp_metric"][1:] == logged["val/loss"]  # then every validation's loss, at the same steps
    assert logged["hp_metric"][-1][1] == pytest.approx(0.4831, rel=0.01)
    hparams = (crop_run / "hparams.yaml").read_text()
    assert "lr: 0.5" in hparams and "standardize: true" in hparams


def test_end_of_fit_table_puts_the_fit_beside_the_optimum():
    table = format_table([("train MSE", 0.5, 0.4831), ("val R2", 0.99, None)])
    lines = table.splitlines()
    assert lines[0].split() == ["SGD", "fit", "least", "squares"]
    assert lines[1].split() == ["train", "MSE", "0.5", "0.4831"]
    assert lines[2].split() == ["val", "R2", "0.99"]
    assert format_table([("train MSE", 0.5, 0.4831)], "Adam").splitlines()[0].split()[:2] == ["Adam", "fit"]


def test_large_models_log_histograms_not_scalars(run_cli, tmp_path):
    args = ["--config", config("synthetic.yaml"), "--data.n_samples", "2048", "--data.n_features", "70"]
    assert run_cli("fit", *args, "--trainer.max_epochs", "2", "--data.batch_size", "512") == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(latest_version(tmp_path / "runs")), size_guidance={"histograms": 0})
    acc.Reload()
    assert set(acc.Tags()["histograms"]) == {"weights/w", "weights/b"}
    assert [e.step for e in acc.Histograms("weights/w")] == [0, 1]
    assert acc.Histograms("weights/w")[0].histogram_value.num == 70
    assert not any(tag.startswith("weights/") for tag in acc.Tags()["scalars"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, deadline: float) -> bytes:
    """GET a URL, retrying while the server starts."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_a_real_tensorboard_server_serves_the_run(crop_run):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(crop_run.parent), "--host", "127.0.0.1"]
        + ["--port", str(port), "--load_fast", "false", "--reload_interval", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base, deadline = f"http://127.0.0.1:{port}/data/plugin", time.monotonic() + 60
    try:
        while True:  # the server answers before it has read the event files: wait for the run to appear
            scalar_tags = json.loads(_get(f"{base}/scalars/tags", deadline))
            if crop_run.name in scalar_tags or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert {"train/loss", "optimum/loss_gap", "val/loss", "hp_metric"} <= set(scalar_tags[crop_run.name])

        query = urllib.parse.urlencode({"run": crop_run.name, "tag": "optimum/loss_gap"})
        points = json.loads(_get(f"{base}/scalars/scalars?{query}", deadline))  # [[wall_time, step, value], ...]
        assert len(points) == 50 and points[-1][2] < 0.01 * 0.4831

        image_tags = json.loads(_get(f"{base}/images/tags", deadline))
        assert "figures/val" in image_tags[crop_run.name]
        query = urllib.parse.urlencode({"run": crop_run.name, "tag": "figures/val"})
        images = json.loads(_get(f"{base}/images/images?{query}", deadline))
        png = _get(f"{base}/images/individualImage?{images[-1]['query']}", deadline)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None


WIDE = ["--config", config("synthetic.yaml"), "--data.n_samples", "4096", "--data.n_features", "40"]
WIDE += ["--data.batch_size", "null", "--trainer.max_epochs", "30"]


def test_a_table_wider_than_the_limit_gets_its_optimum_by_conjugate_gradient(
    run_cli, tmp_path, capsys, caplog, monkeypatch
):
    from lit_linreg import SyntheticDataModule, statistics

    monkeypatch.setattr(statistics, "EXACT_MAX_COLUMNS", 16)  # 42 columns of [1, X, Y] are then "wide"
    assert run_cli("fit", *WIDE, "--model.lr", "auto", "--model.momentum", "auto") == 0
    captured = capsys.readouterr()
    line = re.search(
        r"least squares: train MSE (\S+) by conjugate gradient \((.*)\): (\d+) passes.*residual (\S+);", captured.out
    )
    assert line[2] == "42 columns of [1, X, Y] > statistics.EXACT_MAX_COLUMNS = 16"
    assert int(line[3]) < 30 and float(line[4]) < 1e-8
    assert "no collinearity diagnostics or standard errors at this width" in captured.out
    assert "Lanczos estimates from 32 passes over the rows: Hessian eigenvalues" in caplog.text
    logged = scalars(latest_version(tmp_path / "runs"))
    assert not any(tag.startswith("diagnostics/") for tag in logged)  # absent, not approximate
    dm = SyntheticDataModule(n_samples=4096, n_features=40)
    dm.setup("fit")
    x, y = (t.double().numpy() for t in dm.splits["train"])
    design = np.column_stack([np.ones(len(x)), x])
    optimum = np.square(y - design @ np.linalg.lstsq(design, y, rcond=None)[0]).mean()
    assert logged["optimum/loss"][0][1] == pytest.approx(optimum, rel=1e-6)  # a float32 tag
    assert float(line[1]) == pytest.approx(optimum, rel=1e-5)
    gaps = [v for _, v in logged["optimum/loss_gap"]]
    assert len(gaps) == 30 and min(gaps) >= 0 and gaps[-1] < 1e-6 * optimum  # heavy ball at condition number 1.5


def test_a_wide_solve_that_does_not_converge_turns_the_reference_off(run_cli, tmp_path, capsys, monkeypatch):
    from lit_linreg import statistics

    monkeypatch.setattr(statistics, "EXACT_MAX_COLUMNS", 16)
    monkeypatch.setattr(statistics, "ITERATIVE_MAX_PASSES", 2)
    assert run_cli("fit", *WIDE, "--trainer.max_epochs", "2") == 0
    out = capsys.readouterr().out
    assert re.search(
        r"least squares: reference off: conjugate gradient \(42 columns of \[1, X, Y\] > statistics.EXACT_MAX_COLUMNS"
        r" = 16\) stopped after 4 passes over the training rows, relative residual \S+, short of"
        r" statistics.ITERATIVE_TOLERANCE = 1e-10: no optimum/\* tags",
        out,
    )
    assert not any(tag.startswith(("optimum/", "diagnostics/")) for tag in scalars(latest_version(tmp_path / "runs")))
