"""The least-squares fit from the statistics: the exact solve (QR, refined against the exact sums) and, above
`EXACT_MAX_COLUMNS`, conjugate gradient over the rows.

Both solve the column-standardized problem, whose minimum-norm solution is the one full-batch gradient descent
from zero on standardized data converges to. The helpers that give the standardized design triangle and its SVD
(`_standardized`, `_design_svd`, `_inverse_upper`) serve the diagnostics and the summary too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lit_linreg import statistics  # the limits, read through the package when they are used
from lit_linreg.statistics import aliasing
from lit_linreg.statistics.exact import _exact_gradient
from lit_linreg.statistics.moments import SufficientStatistics, _triangular, _uncentred

if TYPE_CHECKING:
    from lit_linreg.statistics.passes import RowPasses


@dataclass(frozen=True)
class LeastSquares:
    """The exact least-squares fit of every target on the same features.

    Attributes:
        weight: (k, d) coefficients in original units.
        bias: (k,) intercepts; zeros when fitted without one.
        rank: Rank of the design, the intercept column included, judged on column-standardized features;
            None when solved by passes (above `EXACT_MAX_COLUMNS`), which judge no rank.
        n: Rows.
        sse: (k,) residual sum of squares per target.
        fit_intercept: Whether an intercept was fitted.
        passes: Passes over the rows the solve took; 0 when solved from the p x p statistics.
        residual: The relative residual of the standardized normal equations reached by passes (0 when exact).
        converged: Whether that residual reached `ITERATIVE_TOLERANCE` (always, when exact).
        aliased: Indices of the features whose coefficients are not estimable, as R's lm marks them: each is,
            to rounding, a combination of the intercept and the features before it. Their weights are 0 here
            (see `estimable`); () when the design has full rank, or when solved by passes.
    """

    weight: np.ndarray
    bias: np.ndarray
    rank: int | None
    n: int
    sse: np.ndarray
    fit_intercept: bool
    _r: np.ndarray | None = field(repr=False)  # (1 + d, 1 + d) R of [1, X - c_x]; None when solved by passes
    _shift: np.ndarray = field(repr=False)  # (d,) c_x (the mean of x when solved by passes)
    _residual_sum: np.ndarray = field(repr=False)  # (k,) 1'(y - X w - b) at the optimum: zero with an intercept
    passes: int = 0
    residual: float = 0.0
    converged: bool = True
    _rows: RowPasses | None = field(default=None, repr=False)
    _xc_residual: np.ndarray | None = field(default=None, repr=False)  # (d, k) X_c'(y - X w - b) at the optimum
    aliased: tuple[int, ...] = ()
    _alias: np.ndarray | None = field(default=None, repr=False)  # (len(aliased), 1 + d): each as [1, X] combination

    def estimable(self, weight: np.ndarray, bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Any coefficients (weight (k, d), bias (k,) or None) in this fit's convention: the same predictions.

        The weight on each aliased column moves onto the columns it is a combination of, its constant onto the
        bias, and the aliased weights become 0, as they are in `weight`. Every fit of the same data then agrees
        with this one on the estimable coefficients; nothing changes when nothing is aliased.
        """
        weight = np.asarray(weight, dtype=np.float64).reshape(self.weight.shape)
        bias = np.zeros(len(self.bias)) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
        return aliasing.fold(weight, bias, self.aliased, self._alias) if self.aliased else (weight, bias)

    def singularities(self, names: Sequence[str] | None = None, most: int = 8) -> str | None:
        """One line naming the aliased coefficients and what each is a combination of, as R's summary(lm) says
        "2 not defined because of singularities"; None when there are none."""
        if not self.aliased:
            return None
        names = list(names) if names is not None else [f"x{j}" for j in range(self.weight.shape[1])]
        return aliasing.describe(self.aliased, self._alias, names, most)

    @property
    def mse(self) -> float:
        """The optimum's train MSE: mean over rows and targets of the squared error."""
        return float(self.sse.sum() / (self.n * len(self.sse)))

    def gap(self, weight: np.ndarray, bias: np.ndarray | None = None) -> float:
        """Train MSE of any (weight (k, d), bias (k,) or None for zero) minus the optimum's, in O(d^2 k).

        The loss is quadratic with its minimum here, so the gap is ||A (theta - theta*)||^2 / (N k), computed as
        ||R d_theta||^2 from the coefficient differences alone, never as a difference of two near-equal losses.
        A no-intercept optimum's residuals do not sum to zero, which adds -2 db * 1'r* when a bias is passed.
        """
        dw = np.asarray(weight, dtype=np.float64).reshape(self.weight.shape) - self.weight  # (k, d)
        db = (0.0 if bias is None else np.asarray(bias, dtype=np.float64)) - self.bias  # (k,)
        if self._r is None:  # one pass: ||X_c dw||^2 + N c^2 - 2 dw'X_c'r* - 2 c 1'r*, with c = db + dw m
            offset = db + dw @ self._shift  # (k,)
            quad = self._rows(dw.T, targets=False)[1].sum() + self.n * np.square(offset).sum()
            linear = np.sum(dw.T * self._xc_residual) + np.dot(offset, self._residual_sum)
            return float((quad - 2.0 * linear) / (self.n * len(self.sse)))
        dtheta = np.concatenate([(db + dw @ self._shift)[:, None], dw], axis=1)  # (k, 1 + d) on [1, X - c_x]
        quad = np.square(dtheta @ self._r.T).sum()
        return float((quad - 2.0 * np.dot(db, self._residual_sum)) / (self.n * len(self.sse)))


def solve(stats: SufficientStatistics, fit_intercept: bool = True) -> LeastSquares:
    """The exact least-squares W (k, d) and b (k,), per target, from the statistics alone.

    The triangular system is solved in column-standardized units (each x divided by its std), which equilibrates
    it; with an intercept it is also centred, so the intercept decouples. The solution is then refined against
    the exact sums (see `_refine`).

    A rank-deficient design (a constant column beside the intercept, a column that is a combination of others)
    is solved as R's lm solves it: columns are kept in order, the intercept first, and a column that is, to
    rounding, a combination of those kept before it is aliased (`LeastSquares.aliased`): its coefficient is
    not estimable and is fixed at 0, the others are the least-squares answer of the kept columns. Any other
    solution, such as the one gradient descent reaches, maps onto this one by `LeastSquares.estimable`.

    Above `EXACT_MAX_COLUMNS` ("moments" statistics) the same standardized problem is solved by conjugate
    gradient over the rows instead (see `_solve_by_passes`); check `converged` before trusting it.
    """
    if stats.method == "moments":
        return _solve_by_passes(stats, fit_intercept)
    if ("fit", fit_intercept) in stats._cache:  # the summary at the end of fit asks again
        return stats._cache["fit", fit_intercept]
    d, k = stats.n_features, stats.n_targets
    design, targets, rest = _blocks(stats, fit_intercept)
    scale = stats.x_std  # (d,)
    rtol = (d * np.finfo(np.float64).eps) ** (1.0 if stats.method == "qr" else 0.5)  # A'A keeps half the digits
    kept, u, cond, alias = _estimable_solve(stats, fit_intercept, targets, rtol)  # u (len(kept), k) standardized
    w = np.zeros((d, k))
    w[kept] = u / scale[kept, None]
    bias = stats.y_mean - w.T @ stats.x_mean if fit_intercept else np.zeros(k)
    if stats.method == "qr" and cond**2 * np.finfo(np.float64).eps < statistics.REFINE_BELOW:
        rows = np.concatenate([[0], 1 + kept]) if fit_intercept else kept  # of theta, [b; W'] or W'
        triangle = stats.factor()[: 1 + d, : 1 + d] if fit_intercept else design
        if len(kept) < d:  # the triangle of the kept columns alone
            triangle = _triangular(triangle[:, rows])
        theta = _refine(stats, fit_intercept, np.vstack([bias, w]) if fit_intercept else w, triangle, rows)
        w, bias = (theta[1:], theta[0]) if fit_intercept else (theta, bias)
    sse = np.square(targets - design @ w).sum(0) + np.square(rest).sum(0)
    residual_sum = np.zeros(k) if fit_intercept else stats.n * (stats.y_mean - w.T @ stats.x_mean)
    stats._cache["fit", fit_intercept] = LeastSquares(
        weight=w.T,
        bias=bias,
        rank=len(kept) + fit_intercept,
        n=stats.n,
        sse=sse,
        fit_intercept=fit_intercept,
        _r=stats.factor()[: 1 + d, : 1 + d],
        _shift=stats.shift[:d],
        _residual_sum=residual_sum,
        aliased=tuple(int(j) for j in np.setdiff1d(np.arange(d), kept)),
        _alias=alias,
    )
    return stats._cache["fit", fit_intercept]


def _solve_by_passes(stats: SufficientStatistics, fit_intercept: bool) -> LeastSquares:
    """Conjugate gradient on the standardized normal equations (Z'Z / N) u = Z'T / N, one pass over the rows a step.

    Z = X_c / s with an intercept (which then decouples, b = mean_y - w'mean_x); without one the raw X / s, whose
    normal matrix is X_c'X_c + N m m' in the same units. Every target runs its own CG, all in the same passes.
    From u = 0 the iterates stay in the row space of Z: a rank-deficient design gets the minimum-norm solution
    in standardized units, as `solve` gives it. It stops at `ITERATIVE_TOLERANCE` or after `ITERATIVE_MAX_PASSES`
    steps; then one more pass gives the true residual, the SSE, and what `LeastSquares.gap` needs.
    """
    rows = stats.rows
    if rows is None:
        raise ValueError(
            f"{stats.width} columns > EXACT_MAX_COLUMNS = {statistics.EXACT_MAX_COLUMNS} and no rows to pass over"
        )
    d, k, n = stats.n_features, stats.n_targets, stats.n
    mean_x, mean_y, scale = stats.x_mean, stats.y_mean, stats.x_std[:, None]

    def gradient(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The normal equations' residual X'(Y - X w - b) (d, k) in the fit's own terms, SSE (k,), X_c'r, 1'r."""
        xc_residual, sse = rows(w, targets=True)
        residual_sum = np.zeros(k) if fit_intercept else n * (mean_y - w.T @ mean_x)
        return (
            xc_residual + np.outer(mean_x, residual_sum),
            sse + np.square(residual_sum) / n,
            xc_residual,
            residual_sum,
        )

    def normal(v: np.ndarray) -> np.ndarray:  # (Z'Z) v in standardized units
        product = -rows(v / scale, targets=False)[0]
        if not fit_intercept:
            product += n * np.outer(mean_x, mean_x @ (v / scale))
        return product / scale

    u, residual = np.zeros((d, k)), gradient(np.zeros((d, k)))[0] / scale
    direction, squares = residual.copy(), np.square(residual).sum(0)
    start = np.sqrt(squares)
    steps = 0
    while steps < statistics.ITERATIVE_MAX_PASSES and (np.sqrt(squares) > statistics.ITERATIVE_TOLERANCE * start).any():
        product = normal(direction)
        curvature = (direction * product).sum(0)
        alpha = np.divide(squares, curvature, out=np.zeros(k), where=curvature > 0)
        u, residual = u + alpha * direction, residual - alpha * product
        new = np.square(residual).sum(0)
        direction = residual + np.divide(new, squares, out=np.zeros(k), where=squares > 0) * direction
        squares, steps = new, steps + 1
    w = u / scale  # (d, k)
    true, sse, xc_residual, residual_sum = gradient(w)
    reached = np.linalg.norm(true / scale, axis=0) / np.where(start > 0, start, 1.0)
    bias = mean_y - w.T @ mean_x if fit_intercept else np.zeros(k)
    return LeastSquares(
        weight=w.T,
        bias=bias,
        rank=None,
        n=n,
        sse=sse,
        fit_intercept=fit_intercept,
        _r=None,
        _shift=mean_x,
        _residual_sum=residual_sum,
        passes=steps + 2,
        residual=float(reached.max()),
        converged=bool(reached.max() <= 100 * statistics.ITERATIVE_TOLERANCE),
        _rows=rows,
        _xc_residual=xc_residual,
    )


def _blocks(stats: SufficientStatistics, fit_intercept: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The design triangle (d, d), Q'Y over it (d, k) and the residual triangle (k, k) the solve works on.

    With an intercept, rows 1 : 1 + d of R: X centred on its exact mean (Q's first column is 1 / sqrt(N)).
    Without, the R factor of the raw [X, Y]: the shift moved back into R's first row, which then leaves
    [X, Y] = Q (R without its first column), upper Hessenberg, one QR away from triangular.
    """
    d = stats.n_features
    if fit_intercept:
        r = stats.factor()
    else:  # a QR of (p, p): kept for the summary, which asks again
        if "raw factor" not in stats._cache:
            stats._cache["raw factor"] = _triangular(_uncentred(stats)[:, 1:])
        r = stats._cache["raw factor"]
    design, rest = slice(int(fit_intercept), int(fit_intercept) + d), slice(int(fit_intercept) + d, None)
    return r[design, design], r[design, rest], r[rest, rest]


def _standardized(stats: SufficientStatistics, fit_intercept: bool) -> np.ndarray:
    """The design triangle of `_blocks` with each column divided by the feature's std (d, d): a fresh copy, in
    Fortran order so that LAPACK works on it in place."""
    design = _blocks(stats, fit_intercept)[0]
    return np.divide(design, stats.x_std, out=np.empty(design.shape, order="F"))


def _design_svd(stats: SufficientStatistics, fit_intercept: bool, vectors: bool = False) -> tuple:
    """(left, singular, right) of `_standardized`, singular values descending; the vectors None unless asked for.

    Kept on the statistics, for the solve, the diagnostics and the summary share it. Without vectors an SVD
    costs about half as much as with them, and a full-rank design with no near-dependency never needs them.
    """
    from scipy.linalg import svd

    cached = stats._cache.get(("svd", fit_intercept))
    if cached is None or (vectors and cached[0] is None):
        a = _standardized(stats, fit_intercept)
        if vectors:
            cached = svd(a, overwrite_a=True, check_finite=False)
        else:
            cached = None, svd(a, compute_uv=False, overwrite_a=True, check_finite=False), None
        stats._cache["svd", fit_intercept] = cached
    return cached


def _solve_upper(a: np.ndarray, b: np.ndarray, transpose: bool = False) -> np.ndarray:
    """a^-1 b, or a'^-1 b, for an upper-triangular a (q, q): back substitution, O(q^2 k)."""
    from scipy.linalg import solve_triangular

    return solve_triangular(a, b, trans="T" if transpose else "N", check_finite=False)


def _inverse_upper(a: np.ndarray) -> np.ndarray:
    """The inverse of a non-singular upper-triangular a (q, q), computed in a's memory (LAPACK's dtrtri)."""
    from scipy.linalg import lapack

    inverse, info = lapack.dtrtri(a, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"the triangle is singular: its diagonal entry {info - 1} is 0")
    return inverse


def _estimable_solve(stats: SufficientStatistics, fit_intercept: bool, b: np.ndarray, rtol: float) -> tuple:
    """Least-squares u of T u = b, T = `_standardized` (d, d) upper triangular, b (d, k), on the estimable columns.

    Returns the kept columns' indices, u (len(kept), k), the kept columns' condition number, and the aliased
    columns as combinations (a, 1 + d) of [1, X] (None when none is aliased). The singular values judge the
    rank (below rtol times the largest, q * eps is numpy's `matrix_rank` rule): full rank is back substitution,
    the most accurate for an ill-conditioned triangle; otherwise `aliasing.kept_columns` chooses the columns.
    """
    singular = _design_svd(stats, fit_intercept)[1]
    if (singular > singular[0] * rtol).all():
        d = len(singular)
        return np.arange(d), _solve_upper(_standardized(stats, fit_intercept), b), singular[0] / singular[-1], None
    t = _standardized(stats, fit_intercept)
    kept = aliasing.kept_columns(t, singular[0] * rtol)
    q, r = np.linalg.qr(t[:, kept])  # (d, r), (r, r)
    beta = _solve_upper(r, q.T @ t[:, np.setdiff1d(np.arange(t.shape[1]), kept)])  # (r, a): the aliased in the kept
    alias = aliasing.alias_matrix(beta, kept, stats.x_std, stats.x_mean, centred=fit_intercept)
    singular = np.linalg.svd(r, compute_uv=False)
    return kept, _solve_upper(r, q.T @ b), singular[0] / singular[-1] if singular[-1] > 0 else np.inf, alias


def _refine(
    stats: SufficientStatistics, fit_intercept: bool, theta: np.ndarray, r: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Refines raw coefficients theta (q, k), [b; W'] or W': theta += (R'R)^-1 A'(Y - A theta) on its `rows`.

    r is the triangle of the design's columns `rows`, of full rank: of [1, X - c_x] with an intercept (the step
    is taken in its shifted coordinates), of the raw X without. The other rows of theta (aliased) stay 0.

    A backward-stable QR answer is off by about eps * (cond + cond^2 * ||residual|| / ||fit||), relative: R's
    target columns carry rounding of the size of ||Y||. The gradient from the exact sums carries none, and R
    only has to make each step contract (by about cond^2 * eps, hence `REFINE_BELOW`), so one or two steps
    reach the least-squares solution of the float64 data as given. A step that does not shrink is not taken.
    """
    d, k = stats.n_features, stats.n_targets
    columns, targets = slice(0 if fit_intercept else 1, 1 + d), slice(1 + d, 1 + d + k)
    shift, scale = stats.shift[:d], np.concatenate([[1.0], stats.x_std])[columns]
    r = np.asfortranarray(r)  # one copy, which LAPACK then reads in place at every step
    previous = np.inf
    for _ in range(3):
        gradient = _exact_gradient(stats._exact, columns, targets, theta)
        if fit_intercept:  # to the shifted coordinates of R: [1, X - c] theta_s = [1, X] theta
            gradient[1:] -= shift[:, None] * gradient[0]
        step = np.zeros_like(theta)
        step[rows] = _solve_upper(r, _solve_upper(r, gradient[rows], transpose=True))
        if fit_intercept:
            step[0] -= shift @ step[1:]
        size = np.linalg.norm(step * scale[:, None])
        if not size < previous / 2 or size == 0:
            break
        theta, previous = theta + step, size
    return theta


def train_mse(stats: SufficientStatistics, weight: np.ndarray, bias: np.ndarray | None = None) -> float:
    """Train MSE (mean over rows and targets) of any weight (k, d) and bias (k,) or None, in O(p^2 k).

    ||Y - X W' - b||^2 = ||A V||^2 = ||R V||^2, V (p, k) the coefficients of the residual on [1, X - c_x, Y - c_y].
    """
    r, d, k = stats.factor(), stats.n_features, stats.n_targets
    weight = np.asarray(weight, dtype=np.float64).reshape(k, d)
    bias = np.zeros(k) if bias is None else np.asarray(bias, dtype=np.float64)
    v = np.zeros((stats.width, k))
    v[0] = stats.shift[d:] - bias - weight @ stats.shift[:d]
    v[1 : 1 + d] = -weight.T
    v[1 + d :] = np.eye(k)
    return float(np.square(r @ v).sum() / (stats.n * k))
