"""The fit figure: predictions against targets (and the fitted line, with one input), drawn to TensorBoard.

matplotlib is imported only when a figure is drawn: a run without TensorBoard never pays for it.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger


class FitFigure(L.Callback):
    """Draws predictions against targets (and, with one input, the data and the fitted line) to TensorBoard.

    Drawn once at the end of fit, validate and test, from the validation (or test) rows, under
    `figures/val` or `figures/test`.

    Args:
        enabled: Draw the figure.
        max_points: Rows drawn at most; larger sets are cut to their first rows.
    """

    def __init__(self, enabled: bool = True, max_points: int = 2000) -> None:
        self.enabled = enabled
        self.max_points = max_points

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "val")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._draw(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not (self.enabled and loggers and trainer.is_global_zero):
            return
        loader = trainer.val_dataloaders if split == "val" else trainer.test_dataloaders
        if loader is None:
            return
        x, y = (torch.cat(t)[: self.max_points] for t in zip(*_first_rows(loader, self.max_points), strict=False))
        with torch.no_grad():
            y_hat = pl_module(x.to(pl_module.device)).cpu()
        figure = draw_fit(x.cpu(), y.cpu(), y_hat, getattr(trainer.datamodule, "target_names", None))
        for logger in loggers:
            logger.experiment.add_figure(f"figures/{split}", figure, trainer.global_step, close=False)
        import matplotlib.pyplot as plt

        plt.close(figure)


def _first_rows(loader, limit: int):
    seen = 0
    for batch in loader:
        yield batch
        seen += len(batch[0])
        if seen >= limit:
            return


def draw_fit(x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, names: list[str] | None = None):
    """A matplotlib figure: one panel per output of predicted against target; with one input, the line too."""
    import matplotlib  # lazy: only a run that draws pays for importing matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_out = y.shape[1]
    names = names or [f"y{i}" for i in range(n_out)]
    line = x.shape[1] == 1
    figure, axes = plt.subplots(1, n_out + line, figsize=(4 * (n_out + line), 3.6), squeeze=False)
    for j, ax in enumerate(axes[0][:n_out]):
        lo, hi = float(min(y[:, j].min(), y_hat[:, j].min())), float(max(y[:, j].max(), y_hat[:, j].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, label="perfect fit")
        ax.scatter(y[:, j], y_hat[:, j], s=12)
        ax.set(xlabel=f"{names[j]} (target)", ylabel=f"{names[j]} (predicted)", title=names[j])
    if line:
        ax = axes[0][-1]
        order = x[:, 0].argsort()
        ax.scatter(x[:, 0], y[:, 0], s=12, label="data")
        ax.plot(x[order, 0], y_hat[order, 0], color="C1", label="fitted line")
        ax.set(xlabel="x", ylabel=names[0], title="data and fitted line")
        ax.legend()
    figure.tight_layout()
    return figure
