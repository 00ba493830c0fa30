"""The model class is a choice: a subclass of LinearRegression named by `--model` or `model.class_path`."""

import csv
import sys

import numpy as np
import pytest
import torch
import yaml

from lit_linreg.cli.main import main
from tests.conftest import QUIET, ROOT, latest_version, scalars

# docs/model.md's example, as a user would put it in a module of their own.
HUBER_MODULE = """
import torch.nn.functional as F

from lit_linreg import LinearRegression


class HuberRegression(LinearRegression):
    def loss_per_output(self, x, y):
        target = self.design.target(y)  # (B, out_features), standardized
        return F.huber_loss(self.net(self.design(x)), target, reduction="none").mean(dim=0)
"""

# y = 2x + 1 on 30 rows, the last four 100 too high: outliers, where the Huber loss and the MSE part ways.
X = np.arange(30.0)
Y = 2 * X + 1 + np.where(X >= 26, 100.0, 0.0)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """`my_pkg.HuberRegression` importable, as from a user's package on PYTHONPATH, and a table to fit."""
    (tmp_path / "my_pkg.py").write_text(HUBER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    table = tmp_path / "outliers.csv"
    table.write_text("x,y\n" + "".join(f"{x:g},{y:g}\n" for x, y in zip(X, Y, strict=True)))
    yield table
    sys.modules.pop("my_pkg", None)


def data_args(table) -> list[str]:
    full_batch = ["--data.batch_size", "null", "--data.val_fraction", "0"]
    return ["--data", "lit_linreg.TableDataModule", "--data.path", str(table), "--data.targets", "[y]", *full_batch]


def print_config(*args: str, capsys) -> dict:
    """The config `--print_config` prints for ARGS, parsed."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"])
    assert exit_.value.code in (None, 0)
    return yaml.safe_load(capsys.readouterr().out)


def test_a_subclass_named_by_model_trains_with_its_own_loss(run_cli, user_module, tmp_path):
    args = ["--model", "my_pkg.HuberRegression", "--model.init", "zeros", "--trainer.log_every_n_steps", "1"]
    assert run_cli("fit", *data_args(user_module), *args, "--trainer.max_epochs", "1") == 0
    run = latest_version(tmp_path / "runs")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    mean, std = state["state_dict"]["design.y_mean"].item(), state["state_dict"]["design.y_std"].item()
    # Step 0 predicts 0 in standardized units (W = 0, b = 0); train/loss is the loss times the target's variance.
    residual = np.abs((Y - mean) / std)
    huber = np.where(residual < 1, 0.5 * residual**2, residual - 0.5).mean() * std**2
    mse = np.square(Y - mean).mean()
    step0 = dict(scalars(run)["train/loss"])[0]
    assert step0 == pytest.approx(huber, rel=1e-5)
    assert step0 < 0.4 * mse  # about 785 against 2149: the outliers count linearly, not squared
    assert state["hyper_parameters"]["_class_path"] == "my_pkg.HuberRegression"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["class_path"] == "my_pkg.HuberRegression"


def test_class_path_in_a_config_round_trips_and_its_checkpoint_predicts(run_cli, user_module, tmp_path, capsys):
    own = tmp_path / "huber.yaml"
    model = {"class_path": "my_pkg.HuberRegression", "init_args": {"lr": 0.3, "momentum": 0.5}}
    own.write_text(yaml.safe_dump({"model": model, "trainer": {"max_epochs": 3}}))
    printed = print_config("--config", str(own), *data_args(user_module), capsys=capsys)
    assert printed["model"]["class_path"] == "my_pkg.HuberRegression"
    assert (printed["model"]["init_args"]["lr"], printed["model"]["init_args"]["momentum"]) == (0.3, 0.5)
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump(printed))
    assert run_cli("fit", "--config", str(full)) == 0
    fitted = latest_version(tmp_path / "runs") / "checkpoints" / "last.ckpt"

    assert run_cli("predict", "--config", str(full), "--ckpt_path", "last") == 0
    with open(latest_version(tmp_path / "runs") / "predictions.csv") as f:
        rows = [(float(row["x"]), float(row["predicted_y"])) for row in csv.DictReader(f)]
    import my_pkg

    loaded = my_pkg.HuberRegression.load_from_checkpoint(fitted)  # outside the CLI: the class loads its own
    assert type(loaded) is my_pkg.HuberRegression and loaded.hparams.lr == 0.3
    with torch.no_grad():
        expected = loaded(torch.tensor([[x] for x, _ in rows]))[:, 0].tolist()
    assert sorted(x for x, _ in rows) == X.tolist()  # predict reads the validation rows: here, every row
    assert [y for _, y in rows] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", sorted(path.name for path in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_build_linear_regression_with_their_settings(name, capsys):
    shipped = yaml.safe_load((ROOT / "configs" / name).read_text())
    printed = print_config("--config", str(ROOT / "configs" / name), *QUIET, capsys=capsys)["model"]
    assert printed["class_path"] == "lit_linreg.LinearRegression"
    for key, value in shipped["model"].items():
        given = printed["init_args"][key]
        if isinstance(value, dict):  # a network: its class, with its own defaults filled in
            given, value = given["class_path"], value["class_path"]
        assert given == value, key


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "torch.nn.Linear"], "--model torch.nn.Linear is not a subclass of lit_linreg.LinearRegression"),
        (
            ["--model", "my_pkg.HuberRegression", "--model.delta", "3"],
            "unrecognized arguments: --model.delta (not an argument of HuberRegression)",
        ),
        (["--model.lr", "abc"], "Parser key \"model.lr\": Expected a <class 'float'>"),
    ],
)
def test_a_wrong_model_class_or_option_is_refused_in_one_line(run_cli, user_module, capsys, args, message):
    assert run_cli("fit", "--data", "lit_linreg.ToyDataModule", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lit-linreg: error: {message}")
