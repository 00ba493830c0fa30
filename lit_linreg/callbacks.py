"""Callbacks: the exact least-squares reference, coefficients as they move, the fit figure, predictions.

None of them adds work to a training step: the reference makes one extra pass over the training
data at the start of fit, the rest act once per epoch or at the end of a stage.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_linreg import statistics


class LeastSquaresReference(L.Callback):
    """The exact least-squares answer of the training split, how far SGD still is from it, and why.

    At the start of fit it takes the DataModule's one pass of sufficient statistics (`train_statistics`, see
    statistics.py; a DataModule without one gets a pass over its train loader here) and from them alone:

    - solves the least-squares problem exactly (QR, refined), logging `optimum/loss`, its train MSE;
    - scores that answer on the validation rows, `optimum/val_loss`: a baseline for any model;
    - prints and logs the diagnostics: the Hessian's condition number, the largest stable learning rate,
      the nearly collinear columns (`diagnostics/condition_number`, `diagnostics/max_stable_lr`).

    Each epoch it logs, for a model that offers `coefficients()` (W and b in original units):
    `optimum/loss_gap` (the model's train MSE minus the optimum's, >= 0), `optimum/relative_gap` (that over
    the optimum's MSE, or over the targets' variance where the optimum fits almost exactly, R² > 0.999),
    and `optimum/weight_gap`. With `stop_at_relative_gap` set, training stops once the relative gap is
    below it. At the end of fit it prints the fit beside the optimum and a statistician's summary (as R's
    `summary(lm)`), and writes every coefficient to `coefficients.csv` in the run's log directory.

    Above `statistics.EXACT_MAX_COLUMNS` columns the optimum comes from conjugate gradient over the training
    rows, said in one line (passes, residual reached); each `optimum/loss_gap` then costs one more pass. The
    diagnostics and the summary's inference need O(d^3) and are skipped, with one line; an unconverged solve
    logs no `optimum/*` tag at all.

    Args:
        enabled: Compute and log the reference.
        max_table_coefficients: Coefficients printed at most at the end of fit (largest |t| first); all of
            them are in coefficients.csv.
        stop_at_relative_gap: Stop training once `optimum/relative_gap` is at or below this; None never stops.
        stop_when_stalled: Stop training once `optimum/relative_gap` has not fallen 1 % below its best in this
            many epochs (float32 rounding or mini-batch noise is its floor), or in sqrt(condition number) epochs
            where that is longer: heavy ball's gap can stay flat about that long and still converge (a model
            trained whitened has condition number 1). Tables too wide for the diagnostics are never stopped for
            it; None stops none.
    """

    def __init__(
        self,
        enabled: bool = True,
        max_table_coefficients: int = 16,
        stop_at_relative_gap: float | None = None,
        stop_when_stalled: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.max_table_coefficients = max_table_coefficients
        self.stop_at_relative_gap = stop_at_relative_gap
        self.stop_when_stalled = stop_when_stalled
        self.fit: statistics.LeastSquares | None = None
        self.loss: float | None = None
        self.model_loss: float | None = None
        self.gaps: list[float] = []  # optimum/relative_gap of each epoch of this fit, for `shortfall`

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        stats = getattr(trainer.datamodule, "train_statistics", None) or statistics_from_loader(trainer, pl_module)
        self.stats, self.has_bias, self.gaps = stats, _has_bias(pl_module), []
        self.stall_epochs: int | None = None  # see `stop_when_stalled`; set with the diagnostics
        self.log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective: every rank asks here
        if stats.method != "moments":
            self.fit = statistics.solve(stats, self.has_bias)
        elif not self._solve_by_passes(trainer, stats):
            return
        self.loss = self.fit.mse
        variance = float(np.square(stats.y_std).mean())  # the MSE of predicting each target's mean
        self.scale = self.loss if self.loss > 1e-3 * variance else variance  # what the gap is relative to
        self.val_loss = self._val_loss(trainer, pl_module)
        scalars = {"optimum/loss": self.loss}
        if self.val_loss is not None:
            scalars["optimum/val_loss"] = self.val_loss
        if stats.method == "moments":
            log_epoch_scalars(trainer, scalars)
            return
        names = getattr(pl_module, "design_names", None)
        self.diagnostics = statistics.diagnose(stats, stats.n_targets, self.has_bias, names)
        scalars["diagnostics/condition_number"] = self.diagnostics.condition_number
        scalars["diagnostics/max_stable_lr"] = self.diagnostics.max_stable_lr
        log_epoch_scalars(trainer, scalars)
        whitened = getattr(pl_module, "whitened_rank", None) is not None  # see LinearRegression.set_preconditioner
        if self.stop_when_stalled:
            trained = 1.0 if whitened else self.diagnostics.condition_number
            self.stall_epochs = max(self.stop_when_stalled, int(min(np.sqrt(trained), 1e12)))
        if trainer.is_global_zero:
            problem = f"standardized problem: {self.diagnostics.describe()}"
            if whitened:
                problem += "; the model trains it whitened by R, at condition number 1"
            print(f"least squares: train MSE {self.loss:.6g}; {problem}")
            if stats.method == "gram":  # normal equations square the condition number
                digits = max(0.0, 15.9 - 2 * np.log10(max(self.diagnostics.condition_number, 1.0)))
                print(
                    f"least squares from the normal equations ({stats.n} rows > {statistics.QR_MAX_ROWS}, or wide):"
                    f" about {digits:.0f} significant digits"
                )

    def _solve_by_passes(self, trainer: L.Trainer, stats: statistics.SufficientStatistics) -> bool:
        """The optimum of a table too wide for p x p statistics, by passes over the rows; False if none is trusted."""
        width = f"{stats.width} columns of [1, X, Y] > statistics.EXACT_MAX_COLUMNS = {statistics.EXACT_MAX_COLUMNS}"
        self.fit = None
        if stats.rows is None:
            line = f"least squares: reference off: {width}, and these statistics hold no way back to the rows"
        else:
            self.fit = statistics.solve(stats, self.has_bias)
            how = f"{self.fit.passes} passes over the training rows, relative residual {self.fit.residual:.2g}"
            if self.fit.converged:
                line = (
                    f"least squares: train MSE {self.fit.mse:.6g} by conjugate gradient ({width}): {how};"
                    " no collinearity diagnostics or standard errors at this width (they need (X'X)^-1, O(d^3))"
                )
            else:
                line = (
                    f"least squares: reference off: conjugate gradient ({width}) stopped after {how}, short of"
                    f" statistics.ITERATIVE_TOLERANCE = {statistics.ITERATIVE_TOLERANCE:g}: no optimum/* tags"
                )
                self.fit = None
        if trainer.is_global_zero:
            print(line)
        return self.fit is not None

    def _val_loss(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """The least-squares answer's MSE on the validation rows (one pass, float64), or None without them."""
        loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else None
        if loader is None:
            return None
        encode = getattr(pl_module, "encoder", None)
        weight, bias = torch.from_numpy(self.fit.weight), torch.from_numpy(self.fit.bias)
        sse, count = 0.0, 0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.cpu().double(), y.cpu().double()
                x = encode.double()(x) if encode is not None else x
                sse += (x @ weight.T + bias - y).square().sum().item()
                count += y.numel()
        if encode is not None:
            encode.float()
        total = trainer.strategy.reduce(torch.tensor([sse, count], dtype=torch.float64), reduce_op="sum")
        return float(total[0] / total[1]) if total[1] > 0 else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        coefficients = pl_module.coefficients() if self.fit is not None and hasattr(pl_module, "coefficients") else None
        if coefficients is None:  # no model to compare, or a network without coefficients: the baseline stands
            return
        weight, bias = (t.cpu().numpy() for t in coefficients)
        loss_gap = max(self.fit.gap(weight, bias if self.has_bias else None), 0.0)
        self.model_loss = self.loss + loss_gap
        relative = loss_gap / self.scale
        self.gaps.append(relative)
        weight_gap = np.sqrt(np.square(weight - self.fit.weight).sum() + np.square(bias - self.fit.bias).sum())
        log_epoch_scalars(
            trainer,
            {"optimum/loss_gap": loss_gap, "optimum/relative_gap": relative, "optimum/weight_gap": float(weight_gap)},
        )
        if self.stop_at_relative_gap is not None and relative <= self.stop_at_relative_gap:
            trainer.should_stop = True
        if self.stall_epochs is not None and len(self.gaps) > self.stall_epochs:
            before = min(self.gaps[: -self.stall_epochs])  # the best gap until `stall_epochs` epochs ago
            trainer.should_stop |= min(self.gaps[-self.stall_epochs :]) > 0.99 * before

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fit is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        optimizer = trainer.optimizers[0].__class__.__name__ if trainer.optimizers else "none"
        rows = [
            ("train MSE", self.model_loss, self.loss),
            ("val MSE", _item(metrics.get("val/loss")), self.val_loss),
            ("val R2", _item(metrics.get("val/r2")), None),
        ]
        names = getattr(pl_module, "design_names", None)
        wide = self.stats.method == "moments"  # estimates only: inference needs (X'X)^-1
        summaries = _estimates(self.fit, names) if wide else statistics.summarize(self.stats, self.has_bias, names)
        linear = hasattr(pl_module, "coefficients") and pl_module.coefficients() is not None
        fitted = _by_term(pl_module) if linear else {}
        records = coefficient_records(
            pl_module.schema["targets"] if hasattr(pl_module, "schema") else None, summaries, fitted
        )
        print(f"optimizer: {optimizer}")
        if self.model_loss is not None:
            print(
                f"relative gap {(self.model_loss - self.loss) / self.scale:.3g} after {trainer.current_epoch} epochs,"
                f" {self.stats.n} training rows x {self.stats.n_features} columns"
            )
            short = shortfall(self.gaps, self.stop_at_relative_gap, trainer.current_epoch, self._faster(pl_module))
            if short:
                print(short)
        print(format_table(rows))
        shown = sorted(records, key=lambda r: -abs(r["t"]) if np.isfinite(r["t"]) else 0.0)
        shown = shown[: self.max_table_coefficients]
        targets = list(dict.fromkeys(r["target"] for r in records))
        print(format_summary(shown, [] if wide else summaries, [] if wide else targets))
        path = self.log_dir / "coefficients.csv"
        write_coefficients(path, records)
        if len(shown) < len(records):
            print(f"({len(records) - len(shown)} more coefficients in {path}, the largest |t| shown first)")
        if not linear:
            print("(coefficients, the inference table and optimum/loss_gap apply to a linear model only)")

    def _faster(self, pl_module: L.LightningModule) -> str | None:
        """The flag that trains this fit at condition number 1, when it did not use it and it applies."""
        hparams = getattr(pl_module, "hparams", {})
        penalized = any(hparams.get(name) for name in ("l1_strength", "l2_strength", "weight_decay"))
        if hparams.get("precondition") != "none" or not getattr(pl_module, "is_linear", False) or penalized:
            return None  # see LinearRegression._why_not_qr
        return None if self.stats.method == "moments" or not self.has_bias else "--model.precondition qr"


def shortfall(gaps: list[float], goal: float | None, epochs: int, faster: str | None = None) -> str | None:
    """One line for a fit that ended above the relative gap it was asked for; None when it reached it.

    It gives the gap reached, the epochs the goal would take at the rate of the later half of the run (heavy
    ball's gap oscillates, so a rate over a single epoch says little), and the flag that would get there:
    `faster` where given, else more epochs.

    Args:
        gaps: `optimum/relative_gap` of each epoch, in order.
        goal: The relative gap asked for (`stop_at_relative_gap`); None asks for none.
        epochs: The epochs the fit ran.
        faster: A flag that converges much faster, e.g. "--model.precondition qr".
    """
    if goal is None or not gaps or gaps[-1] <= goal:
        return None
    later = [max(gap, 1e-300) for gap in gaps[len(gaps) // 2 :]]
    rate = (np.log(later[-1]) - np.log(later[0])) / (len(later) - 1) if len(later) > 1 else 0.0  # per epoch
    more = int(min(np.ceil(np.log(goal / gaps[-1]) / rate), 1e18)) if rate < 0 else None
    if more is not None and more <= 1000 * epochs:  # else a crawl at a floor, not a rate to extrapolate
        pace = f"at this rate it needs about {more} more epochs"
        flags = [faster, f"--trainer.max_epochs {epochs + more}"]
    else:  # mini-batch noise, or float32 rows that hold the answer no closer (the summary's least squares does)
        pace = "the gap has stopped falling"
        flags = [faster, "a larger --data.batch_size or a lower --model.lr, unless float32 rounding is the floor"]
    advice = " or ".join(flag for flag in flags if flag)
    return (
        f"did not converge: relative gap {gaps[-1]:.3g} after {epochs} epochs, above the {goal:g} asked"
        f" (--reference.stop_at_relative_gap); {pace}: {advice}"
    )


def _estimates(fit: statistics.LeastSquares, names: list[str] | None) -> list[SimpleNamespace]:
    """Per target, the least-squares estimates as `coefficient_records` reads a summary, the inference NaN."""
    names = names or [f"x{j}" for j in range(fit.weight.shape[1])]
    out = []
    for weight, bias in zip(fit.weight, fit.bias, strict=True):
        estimate = np.concatenate([[bias], weight]) if fit.fit_intercept else weight
        nan = np.full(len(estimate), np.nan)
        labels = (["(intercept)"] if fit.fit_intercept else []) + list(names)
        out.append(SimpleNamespace(names=labels, estimate=estimate, std_error=nan, t_value=nan, p_value=nan))
        out[-1].conf_low = out[-1].conf_high = nan
    return out


def _has_bias(pl_module: L.LightningModule) -> bool:
    """Whether a linear model has an intercept; the baseline of any other network fits one."""
    if not getattr(pl_module, "is_linear", False):
        return True
    return pl_module.hparams.get("bias", True)


def statistics_from_loader(trainer: L.Trainer, pl_module: L.LightningModule) -> statistics.SufficientStatistics:
    """One pass over this rank's training batches, gathered over the ranks: for a DataModule without its own.

    Statistics too wide for p x p matrices ("moments") get a `statistics.RowPasses` over the same loader.
    """
    stats = None
    for x, y in _loader_blocks(trainer, pl_module):
        stats = stats or statistics.SufficientStatistics(x.shape[1], y.shape[1])
        stats.update(x, y)
    if trainer.world_size > 1:
        gathered = trainer.strategy.all_gather(torch.from_numpy(stats.to_array()))
        stats = statistics.SufficientStatistics.combine(
            [statistics.SufficientStatistics.from_array(a) for a in gathered.cpu().numpy()]
        )
    if stats.method == "moments":

        def reduce(values: np.ndarray) -> np.ndarray:
            tensor = torch.from_numpy(values).to(trainer.strategy.root_device)
            return trainer.strategy.reduce(tensor, reduce_op="sum").cpu().numpy()

        stats.rows = statistics.RowPasses(lambda: _loader_blocks(trainer, pl_module), stats.mean, reduce)
    return stats


def _loader_blocks(trainer: L.Trainer, pl_module: L.LightningModule):
    """This rank's training batches as float64 numpy (x, y), encoded as the model encodes them."""
    encode = getattr(pl_module, "encoder", None)
    try:
        for x, y in trainer.train_dataloader:
            x, y = x.cpu().double(), y.cpu().double()
            x = encode.double()(x) if encode is not None else x
            yield x.numpy(), y.numpy()
    finally:
        if encode is not None:
            encode.float()


def _by_term(pl_module: L.LightningModule) -> dict[tuple[int, str], float]:
    """The model's coefficients in original units by (target index, term), "(intercept)" for b."""
    weight, bias = (t.cpu().double().numpy() for t in pl_module.coefficients())
    out = {}
    for i in range(weight.shape[0]):
        out |= {(i, name): float(w) for name, w in zip(pl_module.design_names, weight[i], strict=True)}
        out[(i, "(intercept)")] = float(bias[i])
    return out


def coefficient_records(targets, summaries, fitted) -> list[dict]:
    """One record per (target, term): SGD's value beside the least-squares estimate and its inference."""
    records = []
    for i, summary in enumerate(summaries):
        target = targets[i] if targets else f"y{i}"
        for j, term in enumerate(summary.names):
            records.append(
                {
                    "target": target,
                    "term": term,
                    "sgd": fitted.get((i, term), float("nan")),
                    "least_squares": float(summary.estimate[j]),
                    "std_error": float(summary.std_error[j]),
                    "t": float(summary.t_value[j]),
                    "p_value": float(summary.p_value[j]),
                    "ci_low": float(summary.conf_low[j]),
                    "ci_high": float(summary.conf_high[j]),
                }
            )
    return records


def write_coefficients(path: Path, records: list[dict]) -> None:
    """coefficients.csv: every coefficient in full float64 precision (repr round-trips)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["target", "term", "sgd", "least_squares", "std_error", "t", "p_value", "ci_low", "ci_high"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([r[c] if isinstance(r[c], str) else repr(r[c]) for c in columns] for r in records)


def format_summary(records: list[dict], summaries, targets: list[str]) -> str:
    """The coefficient table (SGD beside least squares, with inference) and each target's summary lines."""
    width = max([12, *(len(f"{r['target']}/{r['term']}") + 2 for r in records)])
    head = ["SGD fit", "least squares", "std error", "t", "p-value", "95% CI low", "95% CI high"]
    lines = [f"{'':<{width}}" + "".join(f"{h:>14}" for h in head)]
    for r in records:
        cells = [r["sgd"], r["least_squares"], r["std_error"], r["t"], r["p_value"], r["ci_low"], r["ci_high"]]
        lines.append(f"{r['target'] + '/' + r['term']:<{width}}" + "".join(f"{v:>14.6g}" for v in cells))
    for summary, target in zip(summaries, targets, strict=True):
        lines.append(
            f"{target}: residual standard error {summary.residual_std_error:.6g} on {summary.df_resid} DF;"
            f" R² {summary.r2:.6g}, adjusted R² {summary.adj_r2:.6g};"
            f" F {summary.f_statistic:.6g} on {summary.df_model} and {summary.df_resid} DF, p {summary.f_pvalue:.3g};"
            f" N {summary.n}"
        )
    return "\n".join(lines)


def coefficient_names(pl_module: L.LightningModule) -> list[str]:
    """`target/feature` for every weight, then `target/(intercept)` for every bias, in `_stacked`'s order."""
    targets, features = pl_module.schema["targets"], pl_module.design_names
    names = [f"{target}/{feature}" for target in targets for feature in features]
    if _has_bias(pl_module):
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
        coefficients = pl_module.coefficients() if hasattr(pl_module, "coefficients") else None
        if coefficients is None:  # not a linear model: nothing here applies
            if not getattr(self, "_said", False) and trainer.is_global_zero:
                print("coefficients: weights/* apply to a linear model only; this network has none")
            self._said = True
            return
        weight, bias = coefficients
        has_bias = _has_bias(pl_module)
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
