"""The TensorBoard custom-scalars layout: written with a run, naming the tags the run logs."""

import re

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from lit_linreg.dashboard import layout
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
