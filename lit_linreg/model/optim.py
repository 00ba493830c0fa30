"""The model's SGD: its settings, `lr: auto` and `momentum: auto` from the loss's curvature, advice on divergence.

For a linear model the training loss is a quadratic whose Hessian the statistics pass gives: with L and mu its
largest and smallest (non-zero) eigenvalues, full-batch gradient descent diverges at lr >= 2 / L, and the
fastest fixed settings follow from L and mu (`auto_sgd`). `--optimizer` replaces this SGD (see cli.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lit_linreg.errors import ConfigError


def hessian_eigenvalues(
    moments, has_bias: bool, standardized: bool, whitened: tuple[int, float] | None = None
) -> tuple[np.ndarray, str]:
    """The eigenvalues of the training loss's Hessian, and how they were found, for the `lr auto` line.

    Above `statistics.EXACT_MAX_COLUMNS` they are Lanczos estimates, a pass over the rows each (an upper bound on
    L, mu at least the true one: slower, never unstable), so the model asks for them only for "auto"; a ConfigError
    there when the statistics keep no rows to take them from.

    Args:
        moments: The DataModule's `train_statistics`.
        has_bias: Whether the linear layer has an intercept.
        standardized: Whether the model trains in standardized units.
        whitened: (rank, condition number before) when `precondition: qr` whitens the design, else None.
    """
    from lit_linreg import statistics

    k, wide = moments.n_targets, moments.method == "moments"
    if wide and moments.rows is None:
        raise ConfigError(
            f"model.lr and model.momentum 'auto' need the training rows above {statistics.EXACT_MAX_COLUMNS}"
            " columns, and this DataModule's statistics have none: give numbers"
        )
    if whitened is not None:  # (2 / k) I on the whitened weights and the bias; 0 on the directions dropped
        rank, condition_before = whitened
        how = f"whitened by the statistics' R, correlation condition number {condition_before:.3g} before; "
        return np.full(rank + has_bias, 2.0 / k), how
    if wide:
        estimate = statistics.hessian_eigenvalues if standardized else statistics.raw_hessian_eigenvalues
        before = moments.rows.count
        eigenvalues = estimate(moments, k, has_bias)
        return eigenvalues, f"Lanczos estimates from {moments.rows.count - before} passes over the rows: "
    if standardized:
        return statistics.hessian_eigenvalues(moments, k, has_bias), ""
    # The raw design: H = 2 / (N k) [X 1]'[X 1] for each output.
    columns = [*range(1, 1 + moments.n_features), *([0] if has_bias else [])]
    gram = moments.gram()[np.ix_(columns, columns)]
    return np.linalg.eigvalsh(2 * gram / (moments.n * k)), ""


def max_stable_lr(eigenvalues: np.ndarray) -> float:
    """2 / L: full-batch gradient descent diverges at or above it."""
    return 2 / float(eigenvalues.max())


def auto_sgd(
    lr: float | str, momentum: float | str, eigenvalues: np.ndarray, full_batch: bool, how: str = ""
) -> tuple[float, float, str]:
    """`lr` and `momentum` with "auto" resolved from the Hessian's eigenvalues, and the line that says so.

    Full batch, "auto" is Polyak's heavy ball, the fastest fixed lr and momentum for a quadratic:
    lr = 0.9 * 4 / (sqrt(L) + sqrt(mu))^2, momentum = ((sqrt(k) - 1) / (sqrt(k) + 1))^2 with k = L / mu; with a
    fixed momentum 0, lr = 2 / (L + mu). Mini-batches add noise: lr = 1 / L, momentum 0.
    """
    largest = float(eigenvalues.max())
    smallest = float(eigenvalues[eigenvalues > largest * 1e-12].min())
    if full_batch and momentum in ("auto", 0.0):
        if momentum == "auto":
            ratio = (math.sqrt(largest / smallest) - 1) / (math.sqrt(largest / smallest) + 1)
            # 0.9: a margin for the float32 training copy, whose curvature differs from the float64 one's.
            lr, momentum = 0.9 * 4 / (math.sqrt(largest) + math.sqrt(smallest)) ** 2, ratio**2
        else:
            lr = 2 / (largest + smallest)
    else:
        lr = 1 / largest if lr == "auto" else lr
        momentum = 0.0 if momentum == "auto" else momentum
    line = (
        f"lr auto: {lr:.4g}, momentum {momentum:.4g} ({how}Hessian eigenvalues {smallest:.3g} to"
        f" {largest:.3g}, condition number {largest / smallest:.3g}; full batch: {full_batch})"
    )
    return lr, momentum, line


def sgd(parameters, lr: float | str, momentum: float | str, weight_decay: float) -> torch.optim.SGD:
    """The model's optimizer; a ConfigError while `lr` or `momentum` is still "auto"."""
    if "auto" in (lr, momentum):
        raise ConfigError("model.lr or model.momentum is 'auto' but no training data tuned it")
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)


def lr_advice(lr: float, max_stable_lr: float | None, lr_was_auto: bool) -> str:
    """What to change after a divergence: the learning rate the data allows, when the statistics are known."""
    if max_stable_lr is None:
        return "lower --model.lr or standardize the data"
    if lr_was_auto:  # stable for the full batch: small batches' gradients are noisier
        return f"lr auto chose {lr:.4g} for the full batch: give a lower --model.lr or a larger --data.batch_size"
    return f"the data allows lr < {max_stable_lr:.4g} (full batch): lower --model.lr, or use --model.lr auto"
