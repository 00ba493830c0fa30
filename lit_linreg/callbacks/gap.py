"""The relative gap's floor and the reference's lines: how far a fit may be from an optimum its rows' precision
still resolves, what a fit that ended short of the gap asked for says, and how a wide table's optimum was found.

The gap is (train MSE - optimum MSE) / optimum MSE; only where the optimum's MSE is below `precision_floor` (an
exact fit, which float32 rows cannot resolve) is it taken over the floor instead, and the run says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from lit_linreg import statistics


def shortfall(
    gaps: list[float], goal: float | None, epochs: int, faster: str | None = None, stalled: bool = False
) -> str | None:
    """One line for a fit that ended above the relative gap it was asked for; None when it reached it.

    It gives the gap reached, the epochs the goal would take at the rate of the later half of the run (heavy
    ball's gap oscillates, so a rate over a single epoch says little), and the flag that would get there:
    `faster` where given, else more epochs.

    Args:
        gaps: `optimum/relative_gap` of each epoch, in order.
        goal: The relative gap asked for (`stop_at_relative_gap`); None asks for none.
        epochs: The epochs the fit ran.
        faster: A flag that converges much faster, e.g. "--model.precondition qr".
        stalled: Whether `stop_when_stalled` ended the run: its gap has stopped falling, whatever its last rate.
    """
    if goal is None or not gaps or gaps[-1] <= goal:
        return None
    more = None if stalled else epochs_to(gaps, goal, epochs)
    if more is not None:
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


def epochs_to(gaps: list[float], goal: float, epochs: int) -> int | None:
    """The epochs that `gaps` would take to reach `goal` at the rate of their later half; None when they have
    stopped falling (heavy ball's gap oscillates, so a rate over a single epoch says little)."""
    later = [max(gap, 1e-300) for gap in gaps[len(gaps) // 2 :]]
    rate = (np.log(later[-1]) - np.log(later[0])) / (len(later) - 1) if len(later) > 1 else 0.0  # per epoch
    more = int(min(np.ceil(np.log(goal / gaps[-1]) / rate), 1e18)) if rate < 0 else None
    return more if more is not None and more <= 1000 * epochs else None  # else a crawl at a floor


@dataclass(frozen=True)
class PrecisionFloor:
    """The train MSE that rows of one precision resolve at a table's scale: two fits closer than it are the same
    fit to that precision.

    A prediction adds |b| + sum_j |w_j x_j| and is compared with y: each of these numbers, rounded to the rows'
    precision, moves the residual by up to eps times its size. The floor is (eps S)^2, with S the root mean square
    over the training rows of |y| + |b| + sum_j |w_j x_j| (bounded from the columns' means and standard deviations,
    at the optimum's W and b), averaged over the targets.

    Attributes:
        mse: The floor, (eps S)^2 averaged over the targets.
        eps: The precision's machine epsilon.
        scale: S of the target with the largest one.
        precision: The precision's name, as in "float32".
    """

    mse: float
    eps: float
    scale: float
    precision: str

    def describe(self) -> str:
        return (
            f"{self.precision}'s eps {self.eps:.3g} times this table's scale {self.scale:.3g} (the root mean square of"
            " |y| + |b| + sum |w x| over the rows), squared"
        )


def precision_floor(
    stats: statistics.SufficientStatistics, fit: statistics.LeastSquares, dtype: torch.dtype
) -> PrecisionFloor:
    """The train MSE that rows of `dtype` resolve at the scale of the table of `stats`, whose optimum is `fit`."""
    eps = float(torch.finfo(dtype).eps)
    x_rms = np.sqrt(np.square(stats.x_mean) + np.square(stats.x_std))  # (d,)
    y_rms = np.sqrt(np.square(stats.y_mean) + np.square(stats.y_std))  # (k,)
    scale = y_rms + np.abs(fit.bias) + np.abs(fit.weight) @ x_rms  # (k,) by Minkowski, >= the rows' RMS
    return PrecisionFloor(
        float(np.mean(np.square(eps * scale))), eps, float(scale.max()), str(dtype).removeprefix("torch.")
    )


def arithmetic(trainer: L.Trainer, pl_module: L.LightningModule) -> torch.dtype:
    """The precision the model computes in: its own dtype, or the lower one of a mixed-precision trainer."""
    precision = str(getattr(trainer, "precision", ""))
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return pl_module.dtype


def at_floor(
    floor: PrecisionFloor,
    model_loss: float,
    loss: float,
    gaps: list[float],
    epochs: int,
    stalled: bool,
    condition_number: float | None,
) -> str:
    """The end-of-fit line of a fit whose optimum is finer than its rows resolve: where it stopped, and why."""
    precision, closer = floor.precision, ""
    if precision != "float64":
        closer = "; --trainer.precision 64-true gets closer"
    reached = f"train MSE {model_loss:.6g}, the optimum's {loss:.3g}"
    if gaps[-1] <= 1.0:
        resolve = f"within the {floor.mse:.3g} that {precision} rows resolve"
        return f"reached the {precision} floor: {reached}, {resolve}{closer}"
    more = None if stalled else epochs_to(gaps, 1.0, epochs)
    if more is not None:
        return (
            f"did not converge: {reached}, {gaps[-1]:.3g} times the {precision} floor above the optimum"
            f" after {epochs} epochs; at this rate it needs about {more} more epochs:"
            f" --trainer.max_epochs {epochs + more}"
        )
    why = f"{precision} arithmetic through this design"
    if condition_number is not None:
        why += f" (condition number {condition_number:.3g})"
    return (
        f"did not converge: the fit stopped at its {precision} floor, {reached}: {gaps[-1]:.3g} times the"
        f" {floor.mse:.3g} that {precision} rows resolve above it, after {epochs} epochs; {why} resolves it no"
        f" closer{closer}"
    )


def solve_by_passes(
    stats: statistics.SufficientStatistics, has_bias: bool, say: bool
) -> statistics.LeastSquares | None:
    """The optimum of a table too wide for p x p statistics, by passes over the rows; None if none is trusted.

    Says how it went in one line where `say` (rank zero).
    """
    width = f"{stats.width} columns of [1, X, Y] > statistics.EXACT_MAX_COLUMNS = {statistics.EXACT_MAX_COLUMNS}"
    fit = None
    if stats.rows is None:
        line = f"least squares: reference off: {width}, and these statistics hold no way back to the rows"
    else:
        fit = statistics.solve(stats, has_bias)
        how = f"{fit.passes} passes over the training rows, relative residual {fit.residual:.2g}"
        if fit.converged:
            line = (
                f"least squares: train MSE {fit.mse:.6g} by conjugate gradient ({width}): {how};"
                " no collinearity diagnostics or standard errors at this width (they need (X'X)^-1, O(d^3))"
            )
        else:
            line = (
                f"least squares: reference off: conjugate gradient ({width}) stopped after {how}, short of"
                f" statistics.ITERATIVE_TOLERANCE = {statistics.ITERATIVE_TOLERANCE:g}: no optimum/* tags"
            )
            fit = None
    if say:
        print(line)
    return fit
