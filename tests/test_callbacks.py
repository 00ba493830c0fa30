import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch

from lit_linreg.callbacks import format_table, normal_equations, solve_least_squares
from lit_linreg.cli import main
from lit_linreg.loader import TensorLoader
from tests.conftest import QUIET, config, latest_version, scalars


@pytest.fixture(scope="module")
def crop_run(tmp_path_factory):
    """One finished crop-yield run (50 epochs, standardized): its version directory."""
    root = tmp_path_factory.mktemp("crop") / "runs"
    assert main(["fit", "--config", config("crop_yield.yaml"), *QUIET, "--trainer.default_root_dir", str(root)]) == 0
    return latest_version(root)


def _numpy_lstsq(x: np.ndarray, y: np.ndarray, bias: bool) -> tuple[np.ndarray, np.ndarray]:
    design = np.hstack([x, np.ones((len(x), 1))]) if bias else x
    theta = np.linalg.lstsq(design, y, rcond=None)[0]  # minimum-norm solution
    return (theta[:-1].T, theta[-1]) if bias else (theta.T, np.zeros(y.shape[1]))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rank_deficient", [False, True], ids=["full-rank", "rank-deficient"])
def test_streamed_least_squares_equals_the_direct_solution(bias, rank_deficient):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 4, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 5
    if rank_deficient:  # a duplicated and a scaled column: X'X is singular
        x = torch.cat([x, x[:, :1], 2 * x[:, 1:2]], dim=1)
    y = x @ torch.randn(x.shape[1], 2, generator=g) + 3 + 0.1 * torch.randn(1000, 2, generator=g)
    loader = TensorLoader(x, y, batch_size=128, shuffle=True, seed=1)  # batched, shuffled: the sums must not care

    weight, b = solve_least_squares(normal_equations(loader, bias, torch.device("cpu")), bias)

    expected_w, expected_b = _numpy_lstsq(x.double().numpy(), y.double().numpy(), bias)
    predictions = x.double() @ weight.T + b
    expected_predictions = x.double().numpy() @ expected_w.T + expected_b
    np.testing.assert_allclose(predictions.numpy(), expected_predictions, rtol=1e-6, atol=1e-6)
    if rank_deficient:
        # Many solutions fit equally well. The solver picks the minimum-norm one in column-scaled units (where SGD
        # from zero on standardized data ends): a duplicated column shares its weight equally, and a column 2x
        # another takes half the weight of it.
        np.testing.assert_allclose(weight[:, 4].numpy(), weight[:, 0].numpy(), rtol=1e-6)
        np.testing.assert_allclose(weight[:, 1].numpy(), 2 * weight[:, 5].numpy(), rtol=1e-6)
    else:
        np.testing.assert_allclose(weight.numpy(), expected_w, rtol=1e-6, atol=1e-8)


def test_train_r2_from_the_sums_equals_torchmetrics_on_the_rows():
    from types import SimpleNamespace

    from torchmetrics.functional import r2_score

    from lit_linreg.callbacks import LeastSquaresReference

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(500, 3, generator=g), torch.randn(500, 2, generator=g) * torch.tensor([1.0, 30.0])
    reference = LeastSquaresReference()
    trainer = SimpleNamespace(train_dataloader=TensorLoader(x, y, batch_size=64), strategy=SimpleNamespace())
    trainer.strategy.reduce = lambda value, reduce_op: value  # one process: the sums are already complete
    module = SimpleNamespace(linear=torch.nn.Linear(3, 2), device=torch.device("cpu"))
    reference.on_train_start(trainer, module)

    weight, bias = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    expected = r2_score(x.double() @ weight.T + bias, y.double(), multioutput="uniform_average")
    assert reference.r2(weight, bias) == pytest.approx(expected.item(), rel=1e-9)


def test_crop_run_logs_the_optimum_and_a_gap_that_falls_to_zero(crop_run):
    logged = scalars(crop_run)
    assert [v for _, v in logged["optimum/loss"]] == [pytest.approx(0.4831, abs=1e-4)] * 50
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
    expected_w, _ = _numpy_lstsq(x.numpy(), y.numpy(), bias=True)
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
