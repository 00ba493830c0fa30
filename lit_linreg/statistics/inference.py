"""Per-target inference from the statistics alone, as R's summary(lm) and statsmodels' OLS report it.

Standard errors, t and p values, confidence intervals, R^2 and the F test: from the exact fit and the inverse of
the standardized design triangle. A rank-deficient design is reported as R's lm reports it: the aliased
coefficients (see `solve`) are NA, the rest are the fit of the estimable columns alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lit_linreg.statistics.moments import SufficientStatistics, _triangular, _uncentred
from lit_linreg.statistics.solve import _inverse_upper, _standardized, solve


@dataclass(frozen=True)
class Summary:
    """One target's fit as R's summary(lm) and statsmodels' OLS report it.

    Per coefficient (the intercept first, named "(intercept)"): estimate, std_error, t_value, p_value
    (two-sided) and the confidence interval [conf_low, conf_high]; NaN where the residual degrees of freedom
    are not positive, and all NaN (R's NA) for an aliased coefficient, marked in `aliased`. Then the residual
    standard error, R^2, adjusted R^2, the F statistic against the model with no features (its p-value), N, the
    residual and model degrees of freedom, and `singularities`, the line naming the aliased coefficients (None
    when there are none).
    """

    names: tuple[str, ...]
    estimate: np.ndarray
    std_error: np.ndarray
    t_value: np.ndarray
    p_value: np.ndarray
    conf_low: np.ndarray
    conf_high: np.ndarray
    residual_std_error: float
    r2: float
    adj_r2: float
    f_statistic: float
    f_pvalue: float
    n: int
    df_resid: int
    df_model: int
    aliased: np.ndarray  # (q,) bool
    singularities: str | None = None

    def table(self) -> str:
        """The coefficient table and the fit's summary lines, as R prints them."""
        width = max(len(name) for name in self.names)
        lines = [f"{'':{width}}  {'Estimate':>12} {'Std. Error':>12} {'t value':>9} {'Pr(>|t|)':>10}"]
        for row in zip(
            self.names, self.estimate, self.std_error, self.t_value, self.p_value, self.aliased, strict=True
        ):
            if row[5]:
                lines.append(f"{row[0]:{width}}  {'NA':>12} {'NA':>12} {'NA':>9} {'NA':>10}")
            else:
                lines.append(f"{row[0]:{width}}  {row[1]:12.5g} {row[2]:12.5g} {row[3]:9.3f} {row[4]:10.3g}")
        return "\n".join(
            [
                *lines,
                *([self.singularities] if self.singularities else []),
                f"Residual standard error: {self.residual_std_error:.5g} on {self.df_resid} degrees of freedom",
                f"R-squared: {self.r2:.5g}, adjusted R-squared: {self.adj_r2:.5g}",
                f"F-statistic: {self.f_statistic:.5g} on {self.df_model} and {self.df_resid} DF, "
                f"p-value: {self.f_pvalue:.3g}",
            ]
        )


def summarize(
    stats: SufficientStatistics,
    fit_intercept: bool = True,
    names: Sequence[str] | None = None,
    level: float = 0.95,
) -> list[Summary]:
    """Per-target inference from the statistics alone, as statsmodels' `OLS(y, X).fit()` reports it.

    The estimates are `solve`'s; the variances s^2 diag((X'X)^-1) come from the inverse of the standardized
    triangle, as sums of squares that cannot cancel (for the intercept, s^2 (1/N + m'(S'S)^-1 m) with S the
    centred triangle). Rank-deficient, as R's lm: the aliased coefficients are NaN, every other number is that
    of the fit of the estimable columns alone (statsmodels' OLS on them), and the degrees of freedom count the
    rank. Without an intercept R^2 is uncentred (1 - SSE / y'y) and the F test is against the zero model, as
    statsmodels does for a model with no constant.

    Args:
        stats: The accumulated statistics.
        fit_intercept: Fit an intercept, reported first as "(intercept)".
        names: d feature names; "x0", "x1", ... by default.
        level: Confidence level of the intervals.
    """
    from scipy import stats as distributions

    d, k, n = stats.n_features, stats.n_targets, stats.n
    names = list(names) if names is not None else [f"x{j}" for j in range(d)]
    fit = solve(stats, fit_intercept)
    q = d + fit_intercept
    df_resid, df_model = n - fit.rank, fit.rank - fit_intercept
    if fit_intercept:
        tss = np.square(stats.factor()[1:, 1 + d :]).sum(0)  # about the mean
    else:
        tss = np.square(_uncentred(stats)[:, 1 + d :]).sum(0)  # y'y
    aliased = np.zeros(q, dtype=bool)
    aliased[np.array(fit.aliased, dtype=np.intp) + fit_intercept] = True
    estimates = np.column_stack([fit.bias, fit.weight]) if fit_intercept else fit.weight.copy()  # (k, q)
    estimates[:, aliased] = np.nan
    unit_variance = _unit_variances(stats, fit_intercept, aliased[fit_intercept:])
    nan = np.full(k, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma2 = fit.sse / df_resid if df_resid > 0 else nan
        se = np.sqrt(sigma2[:, None] * unit_variance[None, :])  # (k, q)
        t = estimates / se
        r2 = 1.0 - fit.sse / tss
        adj_r2 = 1.0 - (n - fit_intercept) / df_resid * (1.0 - r2) if df_resid > 0 else nan
        f = (tss - fit.sse) / df_model / sigma2 if df_model > 0 else nan
    quantile = distributions.t.ppf((1.0 + level) / 2.0, df_resid) if df_resid > 0 else np.nan
    p_values = 2.0 * distributions.t.sf(np.abs(t), df_resid) if df_resid > 0 else np.full((k, q), np.nan)
    f_pvalues = distributions.f.sf(f, df_model, df_resid) if df_model > 0 and df_resid > 0 else nan
    labels = (("(intercept)",) if fit_intercept else ()) + tuple(names)
    return [
        Summary(
            names=labels,
            estimate=estimates[i],
            std_error=se[i],
            t_value=t[i],
            p_value=p_values[i],
            conf_low=estimates[i] - quantile * se[i],
            conf_high=estimates[i] + quantile * se[i],
            residual_std_error=float(np.sqrt(sigma2[i])),
            r2=float(r2[i]),
            adj_r2=float(adj_r2[i]),
            f_statistic=float(f[i]),
            f_pvalue=float(f_pvalues[i]),
            n=n,
            df_resid=df_resid,
            df_model=df_model,
            aliased=aliased,
            singularities=fit.singularities(names),
        )
        for i in range(k)
    ]


def _unit_variances(stats: SufficientStatistics, fit_intercept: bool, aliased: np.ndarray) -> np.ndarray:
    """diag((X'X)^-1) (q,) of the design's estimable columns, from the inverse of their column-standardized
    triangle; NaN for the aliased ones (`aliased`, (d,) bool)."""
    kept = ~aliased
    scale, triangle = stats.x_std[kept], _standardized(stats, fit_intercept)
    if not kept.all():  # the triangle of the estimable columns alone
        triangle = np.asfortranarray(_triangular(triangle[:, kept]))
    inverse = _inverse_upper(triangle)  # R_z^-1
    slopes = np.full(len(aliased), np.nan)
    slopes[kept] = np.einsum("ij,ij->i", inverse, inverse) / np.square(scale)
    if not fit_intercept:
        return slopes
    intercept = 1.0 / stats.n + np.square(inverse.T @ (stats.x_mean[kept] / scale)).sum()  # 1/N + m'(S'S)^-1 m
    return np.concatenate([[intercept], slopes])
