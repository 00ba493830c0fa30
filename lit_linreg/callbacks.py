"""Callbacks: the exact least-squares reference, coefficients as they move, the fit figure, predictions.

None of them adds work to a training step: the reference makes one extra pass over the training
data at the start of fit, the rest act once per epoch or at the end of a stage.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class LeastSquaresReference(L.Callback):
    """Solves the training split's least-squares problem exactly and logs how far SGD still is from it.

    At the start of fit it accumulates the normal equations (X'X, X'Y, Y'Y) in float64 in one
    pass over the train loader, sums them over DDP ranks, and solves the centred, column-scaled
    system with an SVD-based solver (rank-deficient X gets the minimum-norm solution). Because the
    model's train MSE is a quadratic in its coefficients, it follows from those sums exactly, with no
    further pass. Each epoch it logs, in original units:

    - `optimum/loss`: the optimum's train MSE (a constant);
    - `optimum/loss_gap`: the model's train MSE minus the optimum's, (d' X'X d) / (N * outputs) >= 0;
    - `optimum/weight_gap`: the L2 distance between the model's coefficients (W and b) and the optimum's.

    At the end of fit it prints a table of the final fit beside the optimum.

    Args:
        enabled: Compute and log the reference.
        max_table_coefficients: Print coefficients in the end-of-fit table when there are at most this many.
    """

    def __init__(self, enabled: bool = True, max_table_coefficients: int = 16) -> None:
        self.enabled = enabled
        self.max_table_coefficients = max_table_coefficients
        self.weight: torch.Tensor | None = None  # (out, in) float64
        self.bias: torch.Tensor | None = None  # (out,) float64
        self.loss: float | None = None
        self.model_loss: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        has_bias = pl_module.linear.bias is not None
        sums = normal_equations(
            trainer.train_dataloader, has_bias, pl_module.device, getattr(pl_module, "encoder", None)
        )
        sums = {k: trainer.strategy.reduce(v, reduce_op="sum") for k, v in sums.items()}
        self._gram, self._cross, self._yy, self._n = sums["gram"], sums["cross"], sums["yy"], sums["n"]
        self._sst = sums["yy"] - sums["y_sum"].square() / sums["n"]  # (out,) total sum of squares about the mean
        self.weight, self.bias = solve_least_squares(sums, has_bias)
        self.loss = self._mse(self._theta(self.weight, self.bias)).item()

    def _theta(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Stacked coefficients (p, out): W' with b as a last row when the model has a bias."""
        rows = [weight.T, bias[None, :]] if self._gram.shape[0] > weight.shape[1] else [weight.T]
        return torch.cat(rows).to(self._gram)

    def _sse(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-output train sum of squared errors of coefficients theta, from the sums alone: (out,)."""
        return ((theta * (self._gram @ theta)).sum(0) - 2 * (theta * self._cross).sum(0) + self._yy).clamp_min(0)

    def _mse(self, theta: torch.Tensor) -> torch.Tensor:
        return self._sse(theta).sum() / (self._n * theta.shape[1])

    def r2(self, weight: torch.Tensor, bias: torch.Tensor) -> float:
        """Train R² of coefficients in original units, averaged over outputs (as torchmetrics' R2Score)."""
        sst = torch.where(self._sst > 0, self._sst, torch.ones_like(self._sst))
        return (1 - self._sse(self._theta(weight, bias)) / sst).mean().item()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.weight is None:
            return
        weight, bias = pl_module.coefficients()
        delta = self._theta(weight, bias) - self._theta(self.weight, self.bias)  # (p, out)
        loss_gap = (delta * (self._gram @ delta)).sum() / (self._n * delta.shape[1])
        self.model_loss = self.loss + loss_gap.item()
        log_epoch_scalars(
            trainer,
            {"optimum/loss": self.loss, "optimum/loss_gap": loss_gap.item(), "optimum/weight_gap": delta.norm().item()},
        )

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.weight is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        rows = [
            ("train MSE", self.model_loss, self.loss),
            ("train R2", self.r2(*pl_module.coefficients()), self.r2(self.weight, self.bias)),
            ("val MSE", _item(metrics.get("val/loss")), None),
            ("val R2", _item(metrics.get("val/r2")), None),
        ]
        weight, bias = pl_module.coefficients()
        has_bias = pl_module.linear.bias is not None
        names = coefficient_names(pl_module)
        fitted, best = _stacked(weight, bias, has_bias), _stacked(self.weight, self.bias, has_bias)
        coefficients = list(zip(names, fitted, best, strict=True))
        shown = coefficients[: self.max_table_coefficients]
        rows += [(name, value.item(), best.item()) for name, value, best in shown]
        print(format_table(rows))
        if len(shown) < len(coefficients):
            print(
                f"({len(coefficients) - len(shown)} more coefficients not shown; raise"
                " --reference.max_table_coefficients, or see weights/* in TensorBoard)"
            )


def coefficient_names(pl_module: L.LightningModule) -> list[str]:
    """`target/feature` for every weight, then `target/(intercept)` for every bias, in `_stacked`'s order."""
    targets, features = pl_module.schema["targets"], pl_module.design_names
    names = [f"{target}/{feature}" for target in targets for feature in features]
    if pl_module.linear.bias is not None:
        names += [f"{target}/(intercept)" for target in targets]
    return names


def _stacked(weight: torch.Tensor, bias: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """W row by row (one target at a time), then b if the model has one: one value per `coefficient_names`."""
    return torch.cat([weight.flatten(), bias.flatten()]) if has_bias else weight.flatten()


def log_epoch_scalars(trainer: L.Trainer, scalars: dict[str, float]) -> None:
    """Write end-of-epoch scalars straight to the loggers, at the step Lightning gives its own epoch metrics.

    The values are the same on every rank, so there is nothing to reduce, and `self.log`'s bookkeeping
    (~0.5 ms a value) would cost more than computing them; loggers write from rank 0 only.
    """
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=max(trainer.global_step - 1, 0))


def _item(value: torch.Tensor | None) -> float | None:
    return None if value is None else float(value)


def format_table(rows: list[tuple[str, float | None, float | None]]) -> str:
    """The end-of-fit table: one row per quantity, the SGD fit beside the exact optimum."""

    def cell(v: float | None) -> str:
        return f"{v:>14.6g}" if v is not None else f"{'':>14}"

    width = max(12, *(len(name) + 2 for name, _, _ in rows))
    lines = [f"{'':<{width}}{'SGD fit':>14}{'least squares':>14}"]
    lines += [f"{name:<{width}}{cell(fit)}{cell(best)}" for name, fit, best in rows]
    return "\n".join(lines)


def normal_equations(loader, has_bias: bool, device: torch.device, encode=None) -> dict[str, torch.Tensor]:
    """Sums X'X, X'Y, Y'Y, the column sums of Y and N over one pass of a loader of (x, y) batches, in float64.

    `encode` maps raw inputs to the design the linear layer sees (one-hot categories, filled-in values).
    """
    gram = cross = yy = y_sum = None
    n = torch.zeros((), dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device, torch.float64), y.to(device, torch.float64)  # (B, in), (B, out)
        if encode is not None:
            x = encode(x)  # (B, design columns)
        if has_bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=device)], dim=1)  # (B, in + 1)
        if gram is None:
            gram, cross, yy, y_sum = x.T @ x, x.T @ y, y.square().sum(0), y.sum(0)
        else:
            gram += x.T @ x
            cross += x.T @ y
            yy += y.square().sum(0)
            y_sum += y.sum(0)
        n += len(x)
    return {"gram": gram, "cross": cross, "yy": yy, "y_sum": y_sum, "n": n}


def solve_least_squares(sums: dict[str, torch.Tensor], has_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-norm least-squares W (out, in) and b (out,) from the normal-equation sums.

    With a bias the problem is centred first (the intercept then drops out), and the columns are
    scaled to unit norm, so the SVD's cut-off for a rank-deficient X is relative to each feature's scale.
    For a rank-deficient X the answer is the minimum-norm solution in those scaled units: the one SGD
    started from zero reaches on standardized data (a duplicated column shares its weight equally).
    """
    gram, cross, n = (sums[k].cpu() for k in ("gram", "cross", "n"))
    if has_bias:
        mean_x, mean_y = gram[-1, :-1] / n, cross[-1] / n
        sxx = gram[:-1, :-1] - n * torch.outer(mean_x, mean_x)
        sxy = cross[:-1] - n * torch.outer(mean_x, mean_y)
    else:
        sxx, sxy = gram, cross
    scale = sxx.diagonal().clamp_min(0).sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    beta = torch.linalg.lstsq(sxx / torch.outer(scale, scale), sxy / scale[:, None], driver="gelsd").solution
    weight = (beta / scale[:, None]).T  # (out, in)
    bias = mean_y - weight @ mean_x if has_bias else torch.zeros(weight.shape[0], dtype=weight.dtype)
    return weight, bias


class CoefficientLogger(L.Callback):
    """Logs the model's coefficients in original units every epoch.

    Small models get one scalar per coefficient, named by column (`weights/<target>/<feature>`, a one-hot
    column as `weights/price/origin=USA`, the bias as `weights/<target>/(intercept)`); larger ones a
    TensorBoard histogram of W and of b.

    Args:
        max_scalars: Largest number of coefficients logged as separate scalars.
    """

    def __init__(self, max_scalars: int = 64) -> None:
        self.max_scalars = max_scalars

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weight, bias = pl_module.coefficients()
        has_bias = pl_module.linear.bias is not None
        if weight.numel() + has_bias * bias.numel() <= self.max_scalars:
            values = _stacked(weight, bias, has_bias).tolist()
            names = coefficient_names(pl_module)
            log_epoch_scalars(trainer, {f"weights/{n}": v for n, v in zip(names, values, strict=True)})
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                logger.experiment.add_histogram("weights/w", weight, trainer.current_epoch)
                if has_bias:
                    logger.experiment.add_histogram("weights/b", bias, trainer.current_epoch)


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


class PredictionWriter(L.Callback):
    """Writes `predictions.csv` in the run directory: the rows predicted for, then one column per target.

    When the DataModule read a predict file (`predict_table`), its columns come back as written (text as
    text, numbers as the digits in the file); otherwise the model's input columns. Each prediction column is
    named `predicted_<target>`, with more underscores if the input already has that name.
    """

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._outputs: list[torch.Tensor] = []
        self._inputs: list[torch.Tensor] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._inputs.append(batch[0].cpu())
        self._outputs.append(outputs.cpu())

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        y_hat = torch.cat(self._outputs).double()  # (N, out_features)
        columns = _input_columns(trainer, pl_module, torch.cat(self._inputs))
        for target, values in zip(pl_module.schema["targets"], y_hat.T, strict=True):
            name = f"predicted_{target}"
            while name in columns:
                name = "_" + name
            columns[name] = [f"{v:.17g}" for v in values.tolist()]  # float64 repr: read back, the same number
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        path = Path(trainer.log_dir or trainer.default_root_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(zip(*columns.values(), strict=True))
        print(f"predictions written to {path}")


def _input_columns(trainer: L.Trainer, pl_module: L.LightningModule, x: torch.Tensor) -> dict[str, list[str]]:
    """The columns predictions.csv repeats: the predict file as written, else the model's raw inputs."""
    table = getattr(trainer.datamodule, "predict_table", None)
    if table is not None:
        loader = trainer.predict_dataloaders
        rows = getattr(getattr(loader, "sampler", None), "indices", lambda: None)()
        if rows is not None:  # under DDP this rank predicted every world_size-th row
            table = table.take(rows.cpu().numpy())
        return {
            name: ["" if v is None else str(v) for v in table.column(name).to_pylist()] for name in table.column_names
        }
    return {
        name: [f"{v:.9g}" for v in column]
        for name, column in zip(pl_module.schema["features"], x.T.tolist(), strict=True)
    }
