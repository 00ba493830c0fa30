"""The model's coefficients by name: logged every epoch, and tabled beside least squares at the end of fit.

`CoefficientLogger` logs them as they move; the rest names them (`target/feature`, `target/(intercept)`) and
builds what `LeastSquaresReference` prints and writes to `coefficients.csv`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lit_linreg.callbacks.scalars import log_epoch_scalars


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


def _has_bias(pl_module: L.LightningModule) -> bool:
    """Whether a linear model has an intercept; the baseline of any other network fits one."""
    if not getattr(pl_module, "is_linear", False):
        return True
    return pl_module.hparams.get("bias", True)


def _by_term(pl_module: L.LightningModule, fit=None) -> dict[tuple[int, str], float]:
    """The model's coefficients in original units by (target index, term), "(intercept)" for b.

    Given the least-squares `fit` (`statistics.LeastSquares`) of a design with aliased columns, in its
    convention: each aliased column's weight moved onto the columns it is a combination of (`fit.estimable`).
    """
    weight, bias = (t.cpu().double().numpy() for t in pl_module.coefficients())
    if fit is not None and fit.aliased:
        weight, bias = fit.estimable(weight, bias if _has_bias(pl_module) else None)
    out = {}
    for i in range(weight.shape[0]):
        out |= {(i, name): float(w) for name, w in zip(pl_module.design_names, weight[i], strict=True)}
        out[(i, "(intercept)")] = float(bias[i])
    return out


def coefficient_records(targets, summaries, fitted) -> list[dict]:
    """One record per (target, term): SGD's value beside the least-squares estimate and its inference.

    An aliased coefficient (not estimable, see `statistics.solve`) is NaN throughout, the fit's value too.
    """
    records = []
    for i, summary in enumerate(summaries):
        target = targets[i] if targets else f"y{i}"
        aliased = getattr(summary, "aliased", np.zeros(len(summary.names), dtype=bool))
        for j, term in enumerate(summary.names):
            records.append(
                {
                    "target": target,
                    "term": term,
                    "sgd": float("nan") if aliased[j] else fitted.get((i, term), float("nan")),
                    "least_squares": float(summary.estimate[j]),
                    "std_error": float(summary.std_error[j]),
                    "t": float(summary.t_value[j]),
                    "p_value": float(summary.p_value[j]),
                    "ci_low": float(summary.conf_low[j]),
                    "ci_high": float(summary.conf_high[j]),
                    "aliased": bool(aliased[j]),
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


def format_summary(records: list[dict], summaries, targets: list[str], optimizer: str = "SGD") -> str:
    """The coefficient table (the fit beside least squares, with inference) and each target's summary lines."""
    width = max([12, *(len(f"{r['target']}/{r['term']}") + 2 for r in records)])
    head = [f"{optimizer} fit", "least squares", "std error", "t", "p-value", "95% CI low", "95% CI high"]
    lines = [f"{'':<{width}}" + "".join(f"{h:>14}" for h in head)]
    for r in records:
        cells = [r["sgd"], r["least_squares"], r["std_error"], r["t"], r["p_value"], r["ci_low"], r["ci_high"]]
        shown = [f"{'NA':>14}"] * len(cells) if r.get("aliased") else [f"{v:>14.6g}" for v in cells]
        lines.append(f"{r['target'] + '/' + r['term']:<{width}}" + "".join(shown))
    said = getattr(summaries[0], "singularities", None) if summaries else None
    if said:  # the same columns are aliased for every target
        lines.append(f"{said}; the fit column moves the model's weights on them onto those columns")
    for summary, target in zip(summaries, targets, strict=True):
        lines.append(
            f"{target}: residual standard error {summary.residual_std_error:.6g} on {summary.df_resid} DF;"
            f" R² {summary.r2:.6g}, adjusted R² {summary.adj_r2:.6g};"
            f" F {summary.f_statistic:.6g} on {summary.df_model} and {summary.df_resid} DF, p {summary.f_pvalue:.3g};"
            f" N {summary.n}"
        )
    return "\n".join(lines)
