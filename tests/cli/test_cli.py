import csv
import re

import pytest
import torch

from tests.conftest import config, latest_version, scalars

NOTEBOOK_LOSSES = {0: 30.00000000, 10: 1.16278565, 20: 0.04506890, 30: 0.00174685, 40: 0.00006770}


def test_toy_run_reproduces_the_notebook_losses_and_predicts_ten(run_cli, tmp_path):
    assert run_cli("fit", "--config", config("toy.yaml")) == 0
    logged = dict(scalars(latest_version(tmp_path / "runs"))["train/loss"])
    for step, expected in NOTEBOOK_LOSSES.items():
        assert logged[step] == pytest.approx(expected, rel=1e-4)
    assert run_cli("predict", "--config", config("toy.yaml"), "--ckpt_path", "last") == 0
    with open(latest_version(tmp_path / "runs") / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"x": "5", "predicted_y": rows[0]["predicted_y"]}]
    assert float(rows[0]["predicted_y"]) == pytest.approx(10.0, abs=5e-4)


def test_fit_twice_into_one_directory(run_cli):
    args = ("fit", "--config", config("toy.yaml"), "--trainer.max_epochs", "2")
    assert run_cli(*args) == 0
    assert run_cli(*args) == 0


def test_crop_yield_reaches_the_least_squares_optimum(run_cli, tmp_path):
    assert run_cli("fit", "--config", config("crop_yield.yaml")) == 0
    logged = scalars(latest_version(tmp_path / "runs"))
    assert logged["optimum/loss"][-1][1] == pytest.approx(0.4831, abs=1e-4)
    assert logged["optimum/loss_gap"][-1][1] < 0.01 * 0.4831


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.lr", "0"], "model.lr must be > 0"),
        (["--model.lerning_rate", "0.1"], "lerning_rate"),
        (["--ckpt_path", "last"], "no last.ckpt"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(run_cli, capsys, args, message):
    assert run_cli("fit", "--config", config("toy.yaml"), *args) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lit-linreg: error:") and message in err


def test_divergence_stops_with_a_clear_message(run_cli, capsys):
    assert run_cli("fit", "--config", config("toy.yaml"), "--model.lr", "10") == 1
    err = capsys.readouterr().err
    assert "epoch" in err and "step" in err and "lower --model.lr" in err


@pytest.mark.slow  # three processes, each importing Lightning
def test_print_config_round_trip_runs_unchanged(run_process, run_cli, tmp_path):
    printed = run_process("fit", "--config", config("toy.yaml"), "--print_config", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert printed.returncode == 0, printed.stderr
    # A command imports what it uses: the notebooks' toy table needs no table reader (pyarrow, and the pandas it
    # imports at its first `pa.array`), no serving and no export. Lightning itself brings scipy and matplotlib.
    imported = set(re.findall(r"^import time: .*\| +([\w.]+)$", printed.stderr, re.M))
    assert "lightning" in imported and "lit_linreg.cli.main" in imported
    assert sorted(imported & {"pyarrow", "pandas", "litserve", "fastapi", "onnx", "onnxruntime", "statsmodels"}) == []
    saved = tmp_path / "full.yaml"
    saved.write_text(printed.stdout)
    assert "lr: 0.01" in printed.stdout and "ToyDataModule" in printed.stdout
    assert run_cli("fit", "--config", str(saved), "--trainer.max_epochs", "3") == 0  # in this process: quicker


@pytest.mark.slow  # DDP in the default suite: tests/data/test_stream.py's two processes on a Parquet table
def test_ddp_on_two_cpu_processes_gives_the_single_process_weights(run_cli, run_process, tmp_path):
    assert run_cli("fit", "--config", config("toy.yaml"), root=tmp_path / "single") == 0
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    done = run_process("fit", "--config", config("toy.yaml"), *ddp, root=tmp_path / "ddp")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sync_dist" not in done.stderr  # every epoch-level value is marked as equal on all ranks

    def weight(root):
        checkpoint = torch.load(latest_version(root) / "checkpoints" / "last.ckpt", weights_only=True)
        return checkpoint["state_dict"]["net.weight"]

    assert weight(tmp_path / "ddp").item() == pytest.approx(weight(tmp_path / "single").item(), abs=1e-5)
    assert weight(tmp_path / "ddp").item() == pytest.approx(2.0, abs=1e-4)
