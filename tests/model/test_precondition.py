"""`--model.precondition qr`: training in the coordinates that the statistics' R whitens, seen in original units."""

import csv
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lit_linreg import LinearRegression, TableDataModule, statistics
from lit_linreg.callbacks import shortfall
from tests.conftest import config, latest_version, quiet_trainer

TABLE = ("fit", "--config", config("table.yaml"))


def write_table(path, condition: float, n: int = 200, d: int = 5, targets: int = 1, seed: int = 0) -> None:
    """A CSV of n rows whose correlation matrix has the given condition number, y = X w + noise.

    Every principal direction of X carries as much of y as every other, as in real tables whose collinear
    columns matter (the weakest one then holds weights of order sqrt(condition number)).
    """
    rng = np.random.default_rng(seed)
    centred, _ = np.linalg.qr(rng.standard_normal((n, d)))
    centred -= centred.mean(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spread = np.geomspace(1.0, condition**-0.5, d)  # singular values: their squared ratio is the condition number
    x = centred @ np.diag(spread) @ rotation.T * np.sqrt(n) + 3 * rng.standard_normal(d)
    y = centred @ rng.standard_normal((d, targets)) * np.sqrt(n) + 0.1 * rng.standard_normal((n, targets))
    names = [f"x{j}" for j in range(d)] + [f"y{j}" for j in range(targets)]
    rows = [[repr(float(v)) for v in row] for row in np.column_stack([x, y])]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([names, *rows])


def fitted(path, epochs: int, targets: int = 1, **model) -> tuple[LinearRegression, TableDataModule]:
    """A model trained on the CSV at `path` (every row trains, full batch unless `model` says otherwise)."""
    batch_size = model.pop("batch_size", None)
    dm = TableDataModule(str(path), [f"y{j}" for j in range(targets)], val_fraction=0.0, batch_size=batch_size, seed=0)
    model = {"precondition": "qr", "lr": "auto", "momentum": "auto"} | model
    net = LinearRegression(dm.in_features, dm.out_features, **model)
    trainer = quiet_trainer(epochs, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(net, datamodule=dm)
    return net, dm


def relative_gap(model: LinearRegression, dm: TableDataModule) -> float:
    """The model's train MSE above the exact optimum's, over the optimum's MSE (as `optimum/relative_gap`)."""
    fit = statistics.solve(dm.train_statistics)
    weight, bias = (t.numpy() for t in model.coefficients())
    return fit.gap(weight, bias) / fit.mse


def test_a_table_of_condition_number_1e10_converges_with_the_default_table_config(run_cli, tmp_path, capsys):
    write_table(tmp_path / "t.csv", 1e10)
    assert run_cli(*TABLE, "--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y0]") == 0
    out = capsys.readouterr().out
    condition = float(re.search(r"standardized problem: condition number (\S+),", out)[1])
    gap, epochs = re.search(r"relative gap (\S+) after (\d+) epochs", out).groups()
    assert 5e9 < condition < 2e10  # the table is as ill-conditioned as the test says
    assert float(gap) <= 1e-3 and int(epochs) <= 5, out
    assert "did not converge" not in out


def test_without_preconditioning_too_few_epochs_print_the_did_not_converge_line(run_cli, tmp_path, capsys):
    write_table(tmp_path / "t.csv", 1e6)
    args = ("--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y0]", "--trainer.max_epochs", "20")
    assert run_cli(*TABLE, *args, "--model.precondition", "none") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("did not converge"))
    gap, epochs, more = re.search(r"relative gap (\S+) after (\d+) epochs.* about (\d+) more epochs", line).groups()
    assert float(gap) > 1e-3 and epochs == "20" and int(more) > 20
    assert line.endswith(f"--model.precondition qr or --trainer.max_epochs {20 + int(more)}")


def test_a_preconditioned_model_reports_and_predicts_in_original_units(tmp_path):
    write_table(tmp_path / "t.csv", 1e4, targets=2)
    model, dm = fitted(tmp_path / "t.csv", epochs=10, targets=2)  # 0.1 of the error left a step
    assert model.design.whitens and model.lr == pytest.approx(0.9 * 2 / 2) and model.momentum == 0  # k = 2 outputs
    x, y = (t.double().numpy() for t in dm.splits["train"])
    exact, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(x)), x]), y, rcond=None)  # (1 + d, k)
    weight, bias = (t.numpy() for t in model.coefficients())
    np.testing.assert_allclose(weight, exact[1:].T, rtol=1e-3)
    np.testing.assert_allclose(bias, exact[0], rtol=1e-3)
    predicted = model(torch.from_numpy(x).float()).double().detach().numpy()
    np.testing.assert_allclose(predicted, x @ exact[1:] + exact[0], atol=1e-3 * y.std())
    np.testing.assert_allclose(predicted, x @ weight.T + bias, atol=1e-5 * y.std())  # coefficients() is forward


def test_the_whitened_design_has_the_identity_as_its_covariance(tmp_path):
    write_table(tmp_path / "t.csv", 1e8)
    model, dm = fitted(tmp_path / "t.csv", epochs=1)
    z = model.design(dm.splits["train"][0]).double()  # (N, d) what the layer sees
    np.testing.assert_allclose((z.T @ z / len(z)).numpy(), np.eye(5), atol=1e-3)
    assert model.design.condition_before == pytest.approx(1e8, rel=0.5)


def test_mini_batch_sgd_with_momentum_converges_in_whitened_coordinates(tmp_path):
    write_table(tmp_path / "t.csv", 1e8)
    model, dm = fitted(tmp_path / "t.csv", epochs=15, batch_size=40, momentum=0.5)
    plain, _ = fitted(tmp_path / "t.csv", epochs=15, batch_size=40, momentum=0.5, precondition="none")
    assert model.lr == pytest.approx(0.5) and model.momentum == 0.5  # lr auto: 1 / L, L = 2 / k
    # Mini-batch noise leaves a floor of the order of lr d / B (0.86 here); without qr the weak directions,
    # which carry as much of y, have hardly moved (110).
    assert relative_gap(model, dm) < 2 and relative_gap(plain, dm) > 50


def test_a_preconditioned_checkpoint_predicts_identically_and_resumes(run_cli, tmp_path, capsys):
    write_table(tmp_path / "t.csv", 1e8)
    data = ("--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y0]")
    assert run_cli(*TABLE, *data, "--trainer.max_epochs", "1", root=tmp_path) == 0
    assert "did not converge" in capsys.readouterr().out  # one step from a random start is not enough
    assert run_cli(*TABLE, *data, "--trainer.max_epochs", "20", "--ckpt_path", "last", root=tmp_path) == 0
    gap, epochs = re.search(r"relative gap (\S+) after (\d+) epochs", capsys.readouterr().out).groups()
    assert float(gap) <= 1e-3 and int(epochs) <= 6
    run = latest_version(tmp_path)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    model = LinearRegression(**{k: v for k, v in checkpoint["hyper_parameters"].items() if k[0] != "_"})
    model.load_state_dict(checkpoint["state_dict"])
    assert model.design.whitens and not torch.equal(model.design.whiten, torch.eye(5))
    predict = ("predict", "--config", config("table.yaml"), *data, "--data.predict_path", str(tmp_path / "t.csv"))
    assert run_cli(*predict, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), root=tmp_path) == 0
    with open(latest_version(tmp_path) / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    x = torch.tensor([[float(row[f"x{j}"]) for j in range(5)] for row in rows])
    saved = torch.tensor([float(row["predicted_y0"]) for row in rows])
    assert torch.equal(saved, model(x)[:, 0].detach())


@pytest.mark.parametrize(
    "args, reason",
    [
        (
            ["--model.net", "lit_linreg.model.nets.MLP", "--model.lr", "0.1", "--model.momentum", "0"],
            "not one linear layer",
        ),
        (["--model.l2_strength", "0.1"], "a penalty or weight decay would act on the whitened weights"),
        (["--model.bias", "false"], "which a model without an intercept (bias: false) cannot undo"),
    ],
)
def test_qr_falls_back_in_one_line_where_it_does_not_apply(run_cli, tmp_path, capsys, caplog, args, reason):
    write_table(tmp_path / "t.csv", 1e2)
    data = ("--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y0]", "--trainer.max_epochs", "1")
    assert run_cli(*TABLE, *data, *args) == 0
    text = capsys.readouterr().out + caplog.text
    lines = [line for line in text.splitlines() if "precondition qr does not apply" in line]
    assert len(lines) == 1 and reason in lines[0] and lines[0].endswith("training without it")


def test_qr_falls_back_for_statistics_too_wide_to_keep_r(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(statistics, "EXACT_MAX_COLUMNS", 4)  # 1 + 5 + 1 columns: "moments", as above 2,048
    write_table(tmp_path / "t.csv", 1e2)
    model, dm = fitted(tmp_path / "t.csv", epochs=1)
    assert dm.train_statistics.method == "moments" and not model.design.whitens
    assert "precondition qr does not apply: 7 columns of [1, X, Y] are too wide" in caplog.text


def test_a_table_beyond_float32_is_held_and_trained_in_float64_and_reaches_the_optimum(
    run_cli, tmp_path, capsys, caplog
):
    write_table(tmp_path / "t.csv", 1e16)  # singular values 1, 1e-2, ..., 1e-8: float32 rows resolve 1e-6 at best
    data = ("--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y0]")
    assert run_cli(*TABLE, *data, root=tmp_path) == 0
    out = capsys.readouterr().out
    assert "float32 rows resolve 4 of the 5 directions of this table (condition number 1.24e+16), float64 rows 5" in (
        caplog.text
    )
    gap, epochs = re.search(r"relative gap (\S+) after (\d+) epochs", out).groups()
    assert float(gap) <= 1e-3 and int(epochs) <= 5
    run = latest_version(tmp_path)
    state = torch.load(next((run / "checkpoints").glob("best-*.ckpt")), weights_only=True)["state_dict"]
    assert state["net.weight"].dtype == state["design.x_mean"].dtype == torch.float64

    # Predicting from the checkpoint reads the rows in float64 too: the predictions are the optimum's.
    x = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1)[:, :5]
    np.savetxt(tmp_path / "new.csv", x[:20], delimiter=",", header="x0,x1,x2,x3,x4", comments="", fmt="%.17g")
    assert run_cli("predict", "--config", config("table.yaml"), *data, "--ckpt_path", "best",
                   "--data.predict_path", str(tmp_path / "new.csv"), root=tmp_path) == 0  # fmt: skip
    predicted = np.loadtxt(latest_version(tmp_path) / "predictions.csv", delimiter=",", skiprows=1)[:, -1]
    checkpoint = torch.load(next((run / "checkpoints").glob("best-*.ckpt")), weights_only=True)
    model = LinearRegression(**{k: v for k, v in checkpoint["hyper_parameters"].items() if k[0] != "_"})
    model.load_state_dict(checkpoint["state_dict"])
    assert model.design.x_mean.dtype == torch.float64  # loading follows the checkpoint's dtype
    # Weights of order 1e7 in original units: float32 inputs would move a prediction by about 10, float64 by 1e-7.
    weight, bias = (t.numpy() for t in model.coefficients())
    np.testing.assert_allclose(predicted, x[:20] @ weight[0] + bias[0], rtol=0, atol=1e-5)

    # Without a predict file it predicts the validation rows, and writes their inputs as the file holds them.
    assert run_cli("predict", "--config", config("table.yaml"), *data, "--ckpt_path", "best", root=tmp_path) == 0
    inputs = np.loadtxt(latest_version(tmp_path) / "predictions.csv", delimiter=",", skiprows=1)[:, :5]
    assert set(inputs[:, 0]) <= set(np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1)[:, 0])

    # Its ONNX export takes and gives float64, and says so; it predicts as `predict` did.
    ort = pytest.importorskip("onnxruntime")
    onnx_file = tmp_path / "model.onnx"
    export = ("export", "--config", config("table.yaml"), *data, "--ckpt_path", "best", "--output", str(onnx_file))
    assert run_cli(*export, root=tmp_path) == 0
    assert json.loads((tmp_path / "model.json").read_text())["dtype"] == "float64"
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"features": x[:20]})[0][:, 0], predicted, rtol=0, atol=1e-7)


def test_a_float64_fit_keeps_its_missing_value_fills_in_float64_through_training_and_export(run_cli, tmp_path):
    from lit_linreg.deploy.export import exportable

    write_table(tmp_path / "t.csv", 1e16)
    lines = (tmp_path / "t.csv").read_text().splitlines()  # and a column of noise with one missing cell
    noise = np.random.default_rng(1).normal(size=len(lines) - 1).astype(str).tolist()
    noise[0] = ""  # filled with the column's training mean
    lines = [f"{lines[0]},z", *(f"{line},{value}" for line, value in zip(lines[1:], noise, strict=True))]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    data = ("--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y0]", "--data.missing", "mean")
    assert run_cli(*TABLE, *data, root=tmp_path) == 0
    checkpoint = torch.load(latest_version(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"]["design.encoder.fill"].dtype == torch.float64  # the reference's pass left it so
    model = LinearRegression(**{k: v for k, v in checkpoint["hyper_parameters"].items() if k[0] != "_"})
    model.load_state_dict(checkpoint["state_dict"])
    assert exportable(model).design.encoder.fill.dtype == torch.float64


def test_precision_64_true_reads_the_rows_in_float64_from_the_start(run_cli, tmp_path, caplog):
    write_table(tmp_path / "t.csv", 1e16)
    data = ("--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y0]", "--trainer.precision", "64-true")
    assert run_cli(*TABLE, *data, root=tmp_path) == 0
    assert "float32 rows" not in caplog.text  # nothing to switch: the rows were float64 already
    state = torch.load(latest_version(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["design.whiten"].dtype == torch.float64 and torch.linalg.matrix_rank(state["design.whiten"]) == 5


def test_rows_that_float64_would_not_fit_in_memory_stay_float32_and_the_line_says_why(
    run_cli, tmp_path, caplog, monkeypatch
):
    from lit_linreg.data import loading

    monkeypatch.setattr(loading, "available_memory", lambda: 1000)  # bytes: the table's float64 rows need more
    write_table(tmp_path / "t.csv", 1e16)
    data = ("--data.path", str(tmp_path / "t.csv"), "--data.targets", "[y0]", "--trainer.max_epochs", "2")
    assert run_cli(*TABLE, *data, root=tmp_path) == 0
    assert "float64 rows would resolve 5, but float64 rows would take 4,800 bytes more, over half the 1,000" in (
        caplog.text
    )
    state = torch.load(latest_version(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["net.weight"].dtype == torch.float32


def test_streamed_rows_stay_float32_so_qr_leaves_out_the_finer_directions_and_the_run_stops_when_stalled(
    run_cli, tmp_path, capsys, caplog
):
    write_table(tmp_path / "t.csv", 1e16)
    frame = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1)
    names = [f"x{j}" for j in range(5)] + ["y0"]
    pq.write_table(pa.table({name: frame[:, j] for j, name in enumerate(names)}), tmp_path / "t.parquet")
    data = ("--data.path", str(tmp_path / "t.parquet"), "--data.targets", "[y0]", "--data.in_memory", "false")
    assert run_cli(*TABLE, *data, "--reference.stop_when_stalled", "5") == 0
    out = capsys.readouterr().out
    assert "precondition qr whitens 4 of the 5 directions" in caplog.text and "held and trained" not in caplog.text
    assert "float64 rows would resolve 5, but its rows stream (--data.in_memory true would hold them)" in caplog.text
    # The optimum's weights, of order 1e8 on columns of order 1, are finer than float32 rows resolve: the gap is over
    # that floor, and the run goes on until it stalls, within a few epochs, then 5 more: not 3,000.
    epochs = re.search(r"relative gap \S+ after (\d+) epochs, .*, over the float32 floor", out)[1]
    assert int(epochs) <= 12 and "reached the float32 floor" in out


def test_shortfall_gives_the_epochs_at_the_later_half_rate_and_the_flag():
    halving = [10 * 0.5**i for i in range(10)]  # 0.0195 after 10 epochs: 5 more halvings reach 0.001
    line = shortfall(halving, 1e-3, 10, "--model.precondition qr")
    assert line == (
        "did not converge: relative gap 0.0195 after 10 epochs, above the 0.001 asked"
        " (--reference.stop_at_relative_gap); at this rate it needs about 5 more epochs:"
        " --model.precondition qr or --trainer.max_epochs 15"
    )
    assert shortfall(halving, 0.02, 10) is None  # reached
    assert shortfall(halving, None, 10) is None  # nothing asked
    assert "the gap has stopped falling" in shortfall([1.0, 0.5, 0.5, 0.6], 1e-3, 4)


def test_the_notebook_configs_do_not_precondition_and_the_table_config_does():
    assert LinearRegression(1, 1).hparams.precondition == "none"
    for name in ("toy.yaml", "crop_yield.yaml"):
        with open(config(name)) as f:
            assert "precondition" not in yaml.safe_load(f)["model"]
    with open(config("table.yaml")) as f:
        assert yaml.safe_load(f)["model"]["precondition"] == "qr"
