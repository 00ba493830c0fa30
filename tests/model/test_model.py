import csv

import pytest
import torch

from lit_linreg import CropYieldDataModule, LinearRegression, ToyDataModule
from lit_linreg.errors import ConfigError
from tests.conftest import ROOT, latest_version, quiet_trainer

X = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
Y = 2 * X


def fit(model, datamodule, epochs, tmp_path):
    trainer = quiet_trainer(epochs, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    return model


def test_autograd_gradient_equals_the_analytic_mse_gradient():
    model = LinearRegression(1, 1, bias=False, init="zeros")
    model.net.weight.data.fill_(0.7)
    loss = model.loss_per_output(X, Y).mean()
    loss.backward()
    w = 0.7
    analytic = 2 / len(X) * (X * (w * X - Y)).sum()  # 2/N * sum(x (w x - y))
    assert model.net.weight.grad.item() == pytest.approx(analytic.item(), rel=1e-6)


def test_summed_gradient_at_lr_equals_averaged_gradient_at_lr_times_n():
    """The notebooks' numpy gradient sums over the 4 rows: the same run as autograd's mean at lr x 4."""
    n, lr = len(X), 0.01
    w_sum = torch.tensor(0.0)
    for _ in range(20):  # notebook 001: np.dot(2*x, y_pred - y).mean() is a sum
        w_sum = w_sum - lr * (2 * X * (w_sum * X - Y)).sum()
    model = LinearRegression(1, 1, bias=False, init="zeros", lr=lr * n)
    optimizer = model.configure_optimizers()
    for _ in range(20):
        optimizer.zero_grad()
        model.loss_per_output(X, Y).mean().backward()
        optimizer.step()
    assert model.net.weight.item() == pytest.approx(w_sum.item(), abs=1e-6)
    assert w_sum.item() == pytest.approx(2.0, abs=1e-4)  # 20 summed steps reach w = 2, as in the notebook


def test_l2_penalty_shrinks_the_toy_weight_to_its_closed_form(tmp_path):
    model = LinearRegression(1, 1, bias=False, init="zeros", lr=0.01, l2_strength=1.0)
    fit(model, ToyDataModule(), 300, tmp_path)
    assert model.net.weight.item() == pytest.approx(2 * 7.5 / 8.5, abs=1e-4)  # 1.7647


def test_l1_penalty_applies_to_weights_not_bias():
    model = LinearRegression(2, 1, init="zeros", l1_strength=0.5, l2_strength=0.25)
    model.net.weight.data = torch.tensor([[1.0, -2.0]])
    model.net.bias.data = torch.tensor([10.0])
    assert float(model.penalty()) == pytest.approx(0.5 * 3 + 0.25 * 5)


def test_standardized_model_predicts_in_original_units(tmp_path):
    dm = CropYieldDataModule()
    model = fit(LinearRegression(3, 2, lr=0.5), dm, 50, tmp_path)
    assert model.design.x_std.sub(1).abs().max() > 1  # statistics really were stored
    x, y = dm.splits["train"]
    weight, bias = model.coefficients()
    manual = x.double() @ weight.T + bias
    assert torch.allclose(model(x).double(), manual, atol=1e-3)
    assert ((model(x) - y) ** 2).mean().item() < 0.4831 * 1.01


def test_the_training_loss_is_the_mean_of_the_per_output_losses_and_an_override_replaces_it(tmp_path):
    dm = CropYieldDataModule()
    model = fit(LinearRegression(3, 2, lr=0.5), dm, 3, tmp_path)  # standardized, two outputs: the general case
    x, y = dm.splits["train"]
    model.trainer.fit_loop.epoch_loop._batches_that_stepped = 0  # a step that does not log
    fused = model.training_step((x, y), 0)
    mse = ((model.design.through(model.net, x) - model.design.target(y)) ** 2).mean()
    assert torch.allclose(fused, mse, rtol=1e-6)

    class Halved(LinearRegression):
        def loss_per_output(self, x, y):
            return super().loss_per_output(x, y) / 2

    halved = Halved(3, 2)
    halved.load_state_dict(model.state_dict())
    halved.trainer = model.trainer
    assert torch.allclose(halved.training_step((x, y), 0), fused / 2, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "model.lr must be > 0"),
        ({"lr": -1.0}, "model.lr must be > 0"),
        ({"momentum": 1.0}, "model.momentum must be in [0, 1)"),
        ({"l2_strength": -0.1}, "model.l2_strength must be >= 0"),
        ({"init": "ones"}, "model.init must be"),
        ({"precondition": "diagonal"}, "model.precondition must be 'none' or 'qr', got 'diagonal'"),
    ],
)
def test_out_of_range_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        LinearRegression(1, 1, **kwargs)


def test_hyperparameters_are_primitives_only():
    schema = {"features": ["a", "b", "c"], "targets": ["y", "z"], "categories": {"c": ["p", "q"]}, "missing": "mean"}
    hp = dict(LinearRegression(3, 2, schema=schema).hparams)

    def primitive(v) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and primitive(x) for k, x in v.items())
        if isinstance(v, list):
            return all(primitive(x) for x in v)
        return v is None or isinstance(v, (int, float, str, bool))

    assert all(primitive(v) for v in hp.values()), hp


OLD_CHECKPOINT = ROOT / "tests" / "fixtures" / "checkpoints" / "houses_before_design.ckpt"
"""configs/table.yaml with `--data.categorical '[neighbourhood]' --data.missing mean`, written before `design` held
the statistics: its state_dict has `x_mean`, ..., `whiten` and `encoder.fill` at the top."""


def test_a_checkpoint_written_before_the_design_module_loads_and_predicts_as_it_did(run_cli, tmp_path):
    assert "x_mean" in torch.load(OLD_CHECKPOINT, weights_only=True)["state_dict"]
    model = LinearRegression.load_from_checkpoint(OLD_CHECKPOINT)
    assert model.design.whitens and model.design.encoder.fill.abs().sum() > 0
    table = ["--config", "configs/table.yaml", "--data.categorical", "[neighbourhood]", "--data.missing", "mean"]
    args = [*table, "--data.predict_path", "data/new_houses.csv", "--ckpt_path", str(OLD_CHECKPOINT)]
    assert run_cli("predict", *args) == 0
    with open(latest_version(tmp_path / "runs") / "predictions.csv") as f:
        predicted = [float(row["predicted_price_k"]) for row in csv.DictReader(f)]
    with open(OLD_CHECKPOINT.with_name("houses_before_design_predictions.csv")) as f:
        before = [float(row[1]) for row in csv.reader(f)]  # what the code of its time predicted
    assert predicted == pytest.approx(before, rel=1e-6)
