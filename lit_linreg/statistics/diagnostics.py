"""Diagnostics of the standardized problem: how hard it is for gradient descent, and which columns make it so.

The Hessian's eigenvalues (hence the largest stable learning rate), the correlation matrix's spectrum, its
condition indices and variance inflation factors, and Belsley's collinear groups: all from the SVD of the
standardized design triangle, or, above `EXACT_MAX_COLUMNS`, the eigenvalues alone from Lanczos passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lit_linreg import statistics  # the limits, read through the package when they are used
from lit_linreg.statistics.moments import SufficientStatistics
from lit_linreg.statistics.solve import _design_svd, _inverse_upper, _standardized


@dataclass(frozen=True)
class Diagnostics:
    """How hard the standardized problem is for gradient descent, and which columns make it so.

    Attributes:
        eigenvalues: Eigenvalues of the Hessian of the standardized loss, ascending (see `hessian_eigenvalues`).
        condition_number: Largest over smallest Hessian eigenvalue (inf when singular).
        max_stable_lr: 2 / largest eigenvalue: full-batch gradient descent diverges at or above it.
        correlation_eigenvalues: (d,) eigenvalues of the correlation matrix Z'Z / N, ascending.
        condition_indices: (d,) sqrt(largest / each) of those, in the same order.
        vif: (d,) variance inflation factors, the diagonal of the inverse correlation matrix (inf: exactly collinear).
        collinear: Groups of feature names caught in a near-dependency (see `collinear_groups`).
    """

    eigenvalues: np.ndarray
    condition_number: float
    max_stable_lr: float
    correlation_eigenvalues: np.ndarray
    condition_indices: np.ndarray
    vif: np.ndarray
    collinear: list[tuple[str, ...]]

    def describe(self) -> str:
        """One line: condition number, largest stable learning rate, collinear groups."""
        groups = "; ".join("{" + ", ".join(group) + "}" for group in self.collinear) or "none"
        return (
            f"condition number {self.condition_number:.3g}, max stable lr {self.max_stable_lr:.3g}, collinear: {groups}"
        )


def correlation_spectrum(stats: SufficientStatistics) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (d,) ascending and eigenvectors (d, d), as columns, of the correlation matrix C = Z'Z / N of x.

    Taken from the SVD of the standardized centred triangle R_z (C = R_z'R_z / N), which resolves a small
    eigenvalue to eps * sqrt(lambda_max * lambda) rather than eps * lambda_max. A constant column is a zero
    column of Z and contributes an eigenvalue 0.
    """
    _, singular, right = _design_svd(stats, True, vectors=True)
    return np.square(singular[::-1]) / stats.n, right[::-1].T


def _correlation_eigenvalues(stats: SufficientStatistics) -> np.ndarray:
    """The eigenvalues of `correlation_spectrum` alone (d,), ascending: from singular values, with no vectors."""
    return np.square(_design_svd(stats, True)[1][::-1]) / stats.n


def hessian_eigenvalues(stats: SufficientStatistics, k: int, has_bias: bool) -> np.ndarray:
    """Eigenvalues, ascending, of the Hessian of the loss the model trains in standardized units.

    With z = (x - mean) / std, t = (y - mean_y) / std_y and loss = (1 / (N k)) sum over rows and the k outputs of
    (t - z w - b)^2, each output's Hessian in (w, b) is H = (2 / (N k)) [Z 1]'[Z 1] = (2 / k) [[C, 0], [0, 1]],
    since Z is centred (Z'1 = 0) and C = Z'Z / N. So its eigenvalues are (2 / k) eig(C), plus 2 / k for the
    bias; the same for every output. Without a bias, (2 / k) eig(C).

    Above `EXACT_MAX_COLUMNS`, estimates from `LANCZOS_STEPS` passes over the rows (see `lanczos_eigenvalues`).
    """
    if stats.method == "moments":  # C v = X_c'X_c (v / s) / (N s): one pass a product
        scale = stats.x_std

        def product(v: np.ndarray) -> np.ndarray:
            return -stats.rows((v / scale)[:, None], targets=False)[0][:, 0] / (stats.n * scale)

        eigenvalues = lanczos_eigenvalues(product, stats.n_features)
    else:
        eigenvalues = _correlation_eigenvalues(stats)
    if has_bias:
        eigenvalues = np.sort(np.append(eigenvalues, 1.0))
    return 2.0 / k * eigenvalues


def raw_hessian_eigenvalues(stats: SufficientStatistics, k: int, has_bias: bool) -> np.ndarray:
    """Estimates, as `lanczos_eigenvalues` gives them, of the eigenvalues of H = (2 / (N k)) [X 1]'[X 1] of raw data.

    For statistics too wide for the Gram matrix, which gives them exactly ("moments" mode): [X 1] [v; c] is
    X_c v + (m'v + c) 1, so H's product needs one pass and the means.
    """
    d, n, mean = stats.n_features, stats.n, stats.x_mean

    def product(v: np.ndarray) -> np.ndarray:
        offset = mean @ v[:d] + (v[d] if has_bias else 0.0)
        out = np.append(-stats.rows(v[:d, None], False)[0][:, 0] + n * offset * mean, n * offset)
        return 2.0 / (n * k) * (out if has_bias else out[:d])

    return lanczos_eigenvalues(product, d + has_bias)


def lanczos_eigenvalues(product: Callable[[np.ndarray], np.ndarray], dim: int, steps: int | None = None) -> np.ndarray:
    """Ritz values, ascending, of a symmetric positive semi-definite operator after `steps` Lanczos steps.

    One `product` a step (a pass over the rows; `LANCZOS_STEPS` by default), full reorthogonalization against
    the (steps, dim) basis, and a fixed start, so every DDP rank takes the same steps. The extreme values
    converge first: the largest is raised by its residual bound beta |y_last|, so it is at least the eigenvalue
    it approximates, which is what a largest stable learning rate needs; the smallest is at least the smallest
    eigenvalue (a heavy ball tuned to it is slower, never unstable).
    """
    steps = min(steps or statistics.LANCZOS_STEPS, dim)
    basis = np.zeros((steps, dim))
    q = np.random.default_rng(0).standard_normal(dim)
    q /= np.linalg.norm(q)
    alphas, betas = [], []
    for j in range(steps):
        basis[j] = q
        w = product(q)
        alphas.append(float(q @ w))
        for _ in range(2):  # twice is enough (Kahan, Parlett)
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        betas.append(float(np.linalg.norm(w)))
        if betas[-1] <= 1e-12 * max(abs(a) for a in alphas):  # an invariant subspace: the values are exact
            break
        q = w / betas[-1]
    tridiagonal = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    values, vectors = np.linalg.eigh(tridiagonal)
    values[-1] += betas[-1] * abs(vectors[-1, -1])
    return np.clip(values, 0.0, None)


def max_stable_lr(eigenvalues: np.ndarray) -> float:
    """2 / lambda_max: full-batch gradient descent converges for any smaller learning rate and diverges above it."""
    return float(2.0 / np.max(eigenvalues))


def collinear_groups(
    stats: SufficientStatistics, names: Sequence[str] | None = None, threshold: float | None = None
) -> list[tuple[str, ...]]:
    """Feature names caught in near-dependencies, by Belsley's rule on the correlation matrix.

    Each eigenvector whose condition index sqrt(lambda_max / lambda_i) exceeds `threshold` (`COLLINEARITY_INDEX`
    by default) is a near-dependency; its members are the columns that owe more than `VARIANCE_PROPORTION` of
    their coefficient's variance to it (variance-decomposition proportions: v_ji^2 / lambda_i over
    sum_i v_ji^2 / lambda_i). Dependencies that share a column are merged. A constant column is a dependency on
    its own (with the intercept).
    """
    names = list(names) if names is not None else [f"x{j}" for j in range(stats.n_features)]
    threshold = statistics.COLLINEARITY_INDEX if threshold is None else threshold
    if not (_condition_indices(_correlation_eigenvalues(stats)) > threshold).any():  # no vectors needed
        return []
    eigenvalues, vectors = correlation_spectrum(stats)
    phi = np.square(vectors) / _floored(eigenvalues)  # (columns, components)
    proportions = phi / phi.sum(axis=1, keepdims=True)
    groups: list[set[int]] = []
    for component, index in enumerate(_condition_indices(eigenvalues)):
        group = set(np.flatnonzero(proportions[:, component] > statistics.VARIANCE_PROPORTION).tolist())
        if index <= threshold or not group:
            continue
        for other in [g for g in groups if g & group]:
            groups.remove(other)
            group |= other
        groups.append(group)
    return [tuple(names[j] for j in sorted(group)) for group in sorted(groups, key=min)]


def diagnose(stats: SufficientStatistics, k: int, has_bias: bool, names: Sequence[str] | None = None) -> Diagnostics:
    """All the diagnostics at once, for a model with k outputs, with or without a bias (see `hessian_eigenvalues`)."""
    correlation = _correlation_eigenvalues(stats)
    if (
        _condition_indices(correlation) > statistics.COLLINEARITY_INDEX
    ).any():  # a near-dependency: its vectors name it
        correlation, vectors = correlation_spectrum(stats)
        vif = (np.square(vectors) / _floored(correlation)).sum(axis=1)
    else:  # cond(C) <= 900: diag(C^-1) = N diag(T^-1 T^-T) from the triangle's inverse, with no singular vectors
        inverse = _inverse_upper(_standardized(stats, True))
        vif = stats.n * np.einsum("ij,ij->i", inverse, inverse)
    eigenvalues = hessian_eigenvalues(stats, k, has_bias)
    return Diagnostics(
        eigenvalues=eigenvalues,
        condition_number=float(eigenvalues[-1] / eigenvalues[0]) if eigenvalues[0] > 0 else np.inf,
        max_stable_lr=max_stable_lr(eigenvalues),
        correlation_eigenvalues=correlation,
        condition_indices=_condition_indices(correlation),
        vif=np.where(vif < 1 / np.finfo(np.float64).eps, vif, np.inf),
        collinear=collinear_groups(stats, names),
    )


def _floored(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues with exact zeros (constant or duplicated columns) raised to a tiny positive value."""
    return np.maximum(eigenvalues, np.finfo(np.float64).eps ** 2 * max(eigenvalues.max(initial=0.0), 1.0))


def _condition_indices(eigenvalues: np.ndarray) -> np.ndarray:
    """sqrt(largest / each); infinite for a zero eigenvalue, also when all are zero (one constant column)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        indices = np.sqrt(eigenvalues.max(initial=0.0) / np.maximum(eigenvalues, 0.0))
    return np.where(eigenvalues > 0, indices, np.inf)
