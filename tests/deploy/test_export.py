"""`export`: the ONNX file predicts what `predict` predicts, from the raw design matrix, for every shipped kind."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from lit_linreg.cli.main import main
from tests.conftest import QUIET, config, latest_version

ort = pytest.importorskip("onnxruntime")

TABLE_ROWS = """id,neighbourhood,area_m2,rooms,age_years,distance_km
A,Central,72.5,3,10,2.5
B,North,150,5,,12
C,"Riverside, east bank",95,4,40,7.25
"""

NO_FIGURE = ["--figure.enabled", "false"]  # matplotlib's drawing: a third of a short fit's time

# (config, training flags, predict flags): each trains in about a second
CASES = {
    "toy": ("toy.yaml", ["--trainer.max_epochs", "10"], []),
    "crop": ("crop_yield.yaml", ["--trainer.max_epochs", "5"], []),
    "table": (
        "table.yaml",
        ["--data.categorical", "[neighbourhood]", "--data.missing", "mean", "--trainer.max_epochs", "30"],
        ["--data.predict_path", "{rows}"],
    ),
    "mlp": ("mlp.yaml", ["--data.n_samples", "512", "--trainer.max_epochs", "1"], []),
}


def design_matrix(rows: list[dict[str, str]], sidecar: dict) -> np.ndarray:
    """The ONNX input built from predictions.csv's input columns, as the sidecar describes it."""
    columns = []
    for name in sidecar["input_columns"]:
        feature, _, level = name.partition("=")
        if feature in sidecar["categories"] and level:
            columns.append([1.0 if row[feature] == level else 0.0 for row in rows])
        else:
            columns.append([float(row[name]) if row[name].strip() else np.nan for row in rows])
    return np.array(columns, dtype=np.float32).T  # (N, design columns)


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    """Train a config briefly, `predict`, and `export`: (predictions.csv rows, ONNX path, sidecar)."""
    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    yaml, train, predict = CASES[name]
    root = ["--trainer.default_root_dir", str(tmp / "runs")]
    (tmp / "rows.csv").write_text(TABLE_ROWS)
    predict = [flag.format(rows=tmp / "rows.csv") for flag in predict]
    common = ["--config", config(yaml), *QUIET, *NO_FIGURE, *root]
    assert main(["fit", *common, *train]) == 0
    assert main(["predict", *common, *train, *predict, "--ckpt_path", "last"]) == 0
    with open(latest_version(tmp / "runs") / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    output = tmp / "model.onnx"
    assert main(["export", *common, *train, "--ckpt_path", "last", "--output", str(output)]) == 0
    return rows, output, json.loads(output.with_suffix(".json").read_text())


def test_onnx_matches_predict_within_1e5_relative(exported):
    rows, onnx_file, sidecar = exported
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (y,) = session.run([sidecar["output"]], {sidecar["input"]: design_matrix(rows, sidecar)})
    expected = np.array([[float(row[name]) for name in sidecar["output_columns"]] for row in rows])
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_sidecar_names_the_design_columns_in_the_checkpoint_order(exported):
    _, onnx_file, sidecar = exported
    if "neighbourhood" in sidecar["categories"]:
        levels = sidecar["categories"]["neighbourhood"]["levels"]
        assert sidecar["input_columns"][-len(levels) + 1 :] == [f"neighbourhood={level}" for level in levels[1:]]
        assert sidecar["missing"] == "NaN in a numeric column: its training mean"
    assert sidecar["onnx"] == onnx_file.name
    assert all(name.startswith("predicted_") for name in sidecar["output_columns"])


class CumprodNet(nn.Module):
    """A network with an op ONNX's opset 17 lacks (cumprod): it trains, but cannot be exported."""

    def build(self, in_features: int, out_features: int) -> None:
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(self.linear(z), dim=1)


def test_a_network_onnx_cannot_hold_is_refused_in_one_line_and_keeps_the_earlier_file(tmp_path, capsys):
    common = ["--config", config("crop_yield.yaml"), *QUIET, *NO_FIGURE, "--trainer.default_root_dir", str(tmp_path)]
    net = ["--model.net", "tests.deploy.test_export.CumprodNet", "--trainer.max_epochs", "1"]
    assert main(["fit", *common, *net]) == 0
    output = tmp_path / "model.onnx"
    output.write_bytes(b"an earlier export")
    capsys.readouterr()
    code = main(["export", *common, *net, "--ckpt_path", "last", "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "the network CumprodNet cannot be exported to ONNX: Exporting the operator 'aten::cumprod'" in err
    assert output.read_bytes() == b"an earlier export"
    assert not output.with_suffix(".json").exists()
    assert main(["export", *common, *net, "--ckpt_path", "last", "--output", str(tmp_path / "model.txt")]) == 2
    assert capsys.readouterr().err == f"lit-linreg: error: --output must name a .onnx file, got {tmp_path}/model.txt\n"


def test_export_without_a_checkpoint_says_export_needs_one(capsys):
    assert main(["export", "--config", config("toy.yaml"), "--output", "unused.onnx"]) == 2
    assert capsys.readouterr().err.startswith("lit-linreg: error: export needs --ckpt_path: a checkpoint file")
