"""The TensorBoard custom-scalars layout: written with a run, naming the tags the run logs."""

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from lit_linreg.cli.dashboard import layout
from tests.conftest import config, latest_version, scalars

LAYOUT_TAG = "custom_scalars__config__"  # where tensorboard's custom-scalars plugin looks for a run's layout


def written_layout(run_dir) -> layout_pb2.Layout | None:
    """The custom-scalars layout in a run's event files, or None."""
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    if LAYOUT_TAG not in acc.Tags()["tensors"]:
        return None
    (event,) = acc.Tensors(LAYOUT_TAG)  # written once
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


def test_the_layout_opens_on_the_loss_beside_the_optimum_and_names_only_logged_tags(run_cli, tmp_path):
    assert run_cli("fit", "--config", config("toy.yaml"), "--trainer.max_epochs", "10") == 0
    run = latest_version(tmp_path / "runs")
    written = written_layout(run)
    assert written is not None
    first = written.category[0]
    assert first.title == "fit against the least-squares optimum"
    assert [list(chart.multiline.tag) for chart in first.chart] == [
        ["^train/loss$", "^optimum/loss$"],
        ["^optimum/relative_gap$"],
        ["^val/r2$"],
        ["^val/loss$", "^optimum/val_loss$"],
    ]
    assert "log scale" in first.chart[1].title
    logged = set(scalars(run))
    for category in written.category:
        for chart in category.chart:
            for regex in chart.multiline.tag:
                assert [tag for tag in logged if re.search(regex, tag)] == [regex.strip("^$")], regex


def test_no_layout_when_the_dashboard_is_disabled(run_cli, tmp_path):
    args = ("fit", "--config", config("toy.yaml"), "--trainer.max_epochs", "1", "--dashboard.enabled", "false")
    assert run_cli(*args) == 0
    run = latest_version(tmp_path / "runs")
    assert "train/loss" in scalars(run) and written_layout(run) is None


def test_a_model_without_coefficients_gets_no_gap_charts():
    tags = [tag for charts in layout(linear=False).values() for _, regexes in charts.values() for tag in regexes]
    assert tags == ["^train/loss$", "^optimum/loss$", "^val/r2$", "^val/loss$", "^optimum/val_loss$"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layout_served(url: str, deadline: float) -> dict:
    """The layout TensorBoard serves, once it has read the run (it answers an empty one before)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                served = json.loads(response.read())
            if served.get("category") or time.monotonic() > deadline:
                return served
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


@pytest.mark.slow  # a fit, a TensorBoard server and a browser: about 15 s
def test_chromium_draws_the_four_charts_of_the_custom_scalars_page(run_cli, tmp_path):
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium): see docs/tensorboard.md for the manual check")
    assert run_cli("fit", "--config", config("crop_yield.yaml")) == 0
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "runs"), "--host", "127.0.0.1"]
        + ["--port", str(port), "--load_fast", "false", "--reload_interval", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        served = _layout_served(f"http://127.0.0.1:{port}/data/plugin/custom_scalars/layout", time.monotonic() + 60)
        assert [c["title"] for c in served["category"]] == [
            "fit against the least-squares optimum",
            "distance to the optimum",
        ]
        shot = tmp_path / "custom_scalars.png"
        with tempfile.TemporaryDirectory() as profile:
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            flags += ["--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=15000"]
            flags += ["--window-size=1400,1000", f"--screenshot={shot}"]
            subprocess.run([browser, *flags, f"http://127.0.0.1:{port}/#custom_scalars"], timeout=120, check=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # The run's curves are drawn in TensorBoard's first run colour, #ff7043; the four charts of the first category
    # sit two by two, right of the settings pane (TensorBoard 2.21 at 1400 x 1000).
    curve = (abs(pixels - [255, 112, 67]) < [20, 30, 30]).all(axis=-1)
    charts = {"train/loss": (150, 350, 385, 715), "relative_gap": (150, 370, 735, 1065)}
    charts |= {"val/r2": (470, 670, 385, 715), "val/loss": (470, 670, 735, 1065)}
    drawn = {name: int(curve[top:bottom, left:right].sum()) for name, (top, bottom, left, right) in charts.items()}
    assert all(count > 100 for count in drawn.values()), drawn
