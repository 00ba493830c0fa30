import csv
import math

import pytest
import torch

from lit_linreg import MLP, SyntheticDataModule
from lit_linreg.errors import ConfigError
from tests.conftest import config, latest_version, scalars

SMALL = ["--data.n_samples", "1024", "--trainer.max_epochs", "2"]  # configs/mlp.yaml in about a second
NOT_LINEAR = "(coefficients, the inference table and optimum/loss_gap apply to a linear model only)"
NO_WEIGHTS = "coefficients: weights/* apply to a linear model only; this network has none"


def test_mlp_builds_the_layers_the_data_sizes_ask_for():
    net = MLP(hidden=[8, 5], activation="tanh")
    net.build(3, 2)
    shapes = [tuple(layer.weight.shape) for layer in net.layers if isinstance(layer, torch.nn.Linear)]
    assert shapes == [(8, 3), (5, 8), (2, 5)]
    assert [type(layer).__name__ for layer in net.layers] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    assert net(torch.zeros(7, 3)).shape == (7, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"hidden": [4, 0]}, "hidden widths must be at least 1"), ({"activation": "sigmoid"}, "must be one of relu")],
)
def test_mlp_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP(**kwargs)


def test_sine_relation_changes_the_mean_only_and_the_default_stays_linear():
    args = {"n_samples": 3000, "n_features": 3, "n_targets": 2, "noise": 0.1, "seed": 4}
    default, linear = SyntheticDataModule(**args), SyntheticDataModule(**args, relation="linear")
    sine = SyntheticDataModule(**args, relation="sine")
    x, y = default.rows(0, 3000)
    assert torch.equal(linear.rows(0, 3000)[1], y)  # "linear" is the default, value for value
    w, b = default.true_weight, default.true_bias
    noise = y - (x @ w.T + b)  # the default is y = X W* + b* + noise
    assert noise.std().item() == pytest.approx(0.1, rel=0.05)
    x_sine, y_sine = sine.rows(0, 3000)
    assert torch.equal(x_sine, x)  # the same inputs...
    torch.testing.assert_close(y_sine - (torch.sin(x) @ w.T + b), noise, atol=1e-5, rtol=0)  # ...and noise
    with pytest.raises(ConfigError, match="data.relation must be 'linear' or 'sine', got 'cubic'"):
        SyntheticDataModule(relation="cubic")


def test_mlp_config_ends_well_below_the_least_squares_optimum(run_cli, tmp_path, capsys):
    assert run_cli("fit", "--config", config("mlp.yaml")) == 0
    logged = scalars(latest_version(tmp_path / "runs"))
    optimum, val_loss = logged["optimum/val_loss"][0][1], logged["val/loss"][-1][1]
    assert optimum == pytest.approx(0.5631, abs=1e-3)  # the straight line leaves the sine's curvature
    assert len(logged["val/loss"]) == 10 and val_loss < 0.05  # 0.016: near the noise variance, 0.01
    assert val_loss < 0.1 * optimum
    table = capsys.readouterr().out.split("least squares\n", 1)[1].splitlines()
    cells = table[1].split()  # the end-of-fit table's "val MSE" row: the fit, then the optimum
    assert cells[:2] == ["val", "MSE"] and float(cells[2]) == pytest.approx(val_loss, rel=1e-4)
    assert float(cells[3]) == pytest.approx(optimum, rel=1e-4)


def test_every_callback_and_stage_runs_with_a_network_and_says_what_does_not_apply(run_cli, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "runs"
    assert run_cli("fit", "--config", config("mlp.yaml"), *SMALL) == 0
    out = capsys.readouterr().out
    assert out.count(NO_WEIGHTS) == 1 and out.count(NOT_LINEAR) == 1  # once each, not once an epoch
    fit_dir = latest_version(root)
    logged = scalars(fit_dir)
    assert not [tag for tag in logged if tag.startswith("weights/") or tag.startswith("optimum/") and "gap" in tag]
    assert logged["optimum/val_loss"][0][1] > 0.5 and logged["optimum/loss"][0][1] > 0.4  # the baseline stands
    with open(fit_dir / "coefficients.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(math.isnan(float(r["sgd"])) for r in rows)  # least squares only
    assert all(math.isfinite(float(r["least_squares"])) for r in rows)
    checkpoints = sorted(p.name for p in (fit_dir / "checkpoints").iterdir())
    assert checkpoints == ["best-001.ckpt", "last.ckpt"]
    val_loss = logged["val/loss"][-1][1]

    assert run_cli("validate", "--config", config("mlp.yaml"), *SMALL, "--ckpt_path", "last") == 0
    assert scalars(latest_version(root))["val/loss"][-1][1] == pytest.approx(val_loss, rel=1e-6)  # the MLP came back
    assert run_cli("test", "--config", config("mlp.yaml"), *SMALL, "--ckpt_path", "last") == 0
    test_dir = latest_version(root)
    assert scalars(test_dir)["test/loss"][-1][1] == pytest.approx(val_loss, rel=1e-6)  # test reuses the val rows
    images = EventAccumulator(str(test_dir), size_guidance={"images": 0})
    images.Reload()
    assert images.Tags()["images"] == ["figures/test"]

    assert run_cli("predict", "--config", config("mlp.yaml"), *SMALL, "--ckpt_path", "last") == 0
    with open(latest_version(root) / "predictions.csv") as f:
        predicted = torch.tensor([float(r["predicted_y0"]) for r in csv.DictReader(f)], dtype=torch.float64)
    _, y = SyntheticDataModule(n_samples=1024, n_features=4, relation="sine").load("predict")["val"]
    assert len(predicted) == 102 and (predicted - y[:, 0].double()).square().mean().item() == pytest.approx(
        val_loss, rel=1e-4
    )  # the predictions score what validation scored
    assert "figures/val" in EventAccumulator(str(fit_dir)).Reload().Tags()["images"]


def test_lr_auto_with_a_network_asks_for_numbers(run_cli, capsys):
    assert run_cli("fit", "--config", config("mlp.yaml"), *SMALL, "--model.lr", "auto") == 2
    assert "model.lr and model.momentum 'auto' apply to a linear model only: give numbers" in capsys.readouterr().err
