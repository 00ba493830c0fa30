"""The TensorBoard page a run opens on: the model against the exact least-squares answer, first.

TensorBoard's SCALARS tab sorts tags into collapsed groups by their prefix, Lightning's `epoch` among them, so the
charts that say how training went (the loss beside the optimum's, the relative gap) are a few clicks away. A
custom-scalars layout, written once into the run's event file, puts them side by side on the CUSTOM SCALARS tab.
"""

from __future__ import annotations

import re

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

# Category -> chart title -> the tags drawn together. Titles say which tags a chart holds. The layout's format
# (tensorboard's layout.proto) has no axis settings: the log scale is the chart's own button, "Toggle y-axis log
# scale", the middle one of the three below it (docs/tensorboard.md).
FIT_CHARTS = {
    "train/loss beside optimum/loss": ["train/loss", "optimum/loss"],
    "optimum/relative_gap, (train MSE - optimum MSE) / optimum MSE (log scale: the middle button below)": [
        "optimum/relative_gap"
    ],
    "val/r2": ["val/r2"],
    "val/loss beside optimum/val_loss": ["val/loss", "optimum/val_loss"],
}
DISTANCE_CHARTS = {
    "optimum/loss_gap": ["optimum/loss_gap"],
    "optimum/weight_gap": ["optimum/weight_gap"],
}
LINEAR_ONLY = {"optimum/relative_gap", "optimum/loss_gap", "optimum/weight_gap"}  # from the model's coefficients()


def layout(linear: bool = True) -> dict[str, dict[str, list]]:
    """The custom-scalars layout, as `SummaryWriter.add_custom_scalars` takes it.

    Args:
        linear: Whether the model offers coefficients; without them the charts of the gap to the optimum are left
            out, as `LeastSquaresReference` logs no gap for such a model.

    Returns:
        {category: {chart title: ["Multiline", [tag regex, ...]]}}, each regex matching one tag exactly (a bare
        `optimum/loss` would also match `optimum/loss_gap`).
    """
    pages = {"fit against the least-squares optimum": FIT_CHARTS, "distance to the optimum": DISTANCE_CHARTS}
    out = {}
    for category, charts in pages.items():
        kept = {
            title: ["Multiline", [f"^{re.escape(tag)}$" for tag in tags]]
            for title, tags in charts.items()
            if linear or not set(tags) <= LINEAR_ONLY
        }
        if kept:
            out[category] = kept
    return out


class TensorBoardLayout(L.Callback):
    """Writes the custom-scalars layout into the run's TensorBoard event file, once, at the start of fit.

    Rank zero writes it, and only when a TensorBoard logger is present (the CSV logger and `--trainer.logger false`
    have nothing to lay out). A model that does not offer `coefficients()` gets the layout without the gap charts.

    Args:
        enabled: Write the layout (`--dashboard.enabled false` leaves TensorBoard's default page).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        coefficients = getattr(pl_module, "coefficients", None)
        linear = callable(coefficients) and coefficients() is not None
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(layout(linear))
