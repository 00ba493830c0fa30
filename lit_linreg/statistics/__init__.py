"""What the project needs from one pass over the training rows: moments, the exact fit, diagnostics, inference.

The limits below choose between the exact path and the passes over the rows. The modules read them through this
package when they run (`statistics.EXACT_MAX_COLUMNS`), never as a copy of their own, so that setting one here,
as a test does to make a small table "wide", reaches every use.
"""

from lit_linreg.statistics.moments import (
    Diagnostics,
    LeastSquares,
    RowPasses,
    SufficientStatistics,
    Summary,
    choose_method,
    collinear_groups,
    correlation_spectrum,
    diagnose,
    hessian_eigenvalues,
    lanczos_eigenvalues,
    max_stable_lr,
    raw_hessian_eigenvalues,
    solve,
    summarize,
    train_mse,
)

QR_MAX_ROWS = 262_144
"""Most training rows accumulated as a QR factor by `choose_method`; taller tables keep the Gram matrix.

The QR update with its exact sums costs about 25 times X'X (1.6 s per million rows of 33 columns on one core),
several training epochs of a tall table; the float64 Gram matrix costs about 5 times X'X, under one epoch.
Ill-conditioned real tables are mostly short; `LeastSquaresReference` says how many digits a Gram solve keeps.
"""
EXACT_MAX_COLUMNS = 2048
"""Widest [1, X, Y] (1 + d + k columns) whose p x p statistics are accumulated under `method="auto"`.

The exact reference costs O(N p^2) for the pass and O(p^3) for the solve, diagnostics, summary and `lr: auto`
(a handful of SVDs and inverses), against O(N d) for an epoch. Measured on 2 cores, 16,384 rows: 2.3 s and
0.4 GB at 512 features, 69 s and 1.6 GB at 2,048 (47 s of it O(p^3), whatever N); at 4,094 features, even on
4,096 rows, 520 s and 1.9 GB. Wider tables keep O(p) moments instead ("moments") and pass over the rows (see
`RowPasses`): at 4,094 features and 16,384 rows, 35 CG passes and 32 Lanczos passes took about 20 s each, in
the rows' own memory plus 0.1 GB. Neither a summary nor collinearity diagnostics there: both need (X'X)^-1
or its eigenvectors.
"""
ITERATIVE_MAX_PASSES = 500
"""Most conjugate-gradient steps (one pass over the rows each) `solve` takes above `EXACT_MAX_COLUMNS`."""
ITERATIVE_TOLERANCE = 1e-10
"""CG stops at this relative residual ||Z'(T - Z U)|| / ||Z'T|| of the standardized normal equations."""
LANCZOS_STEPS = 32
"""Lanczos steps (one pass over the rows each) behind the Hessian's eigenvalues above `EXACT_MAX_COLUMNS`."""
COLLINEARITY_INDEX = 30.0
"""Belsley, Kuh & Welsch (1980): a condition index sqrt(lambda_max / lambda_i) above 30 marks a near-dependency."""
VARIANCE_PROPORTION = 0.5
"""A column belongs to a near-dependency when more than this share of its coefficient's variance comes from it."""
REFINE_BELOW = 0.01
"""Refine a solution when cond^2 * eps, the contraction of a refinement step, is below this (cond < 7e6)."""

__all__ = [
    "COLLINEARITY_INDEX",
    "EXACT_MAX_COLUMNS",
    "ITERATIVE_MAX_PASSES",
    "ITERATIVE_TOLERANCE",
    "LANCZOS_STEPS",
    "QR_MAX_ROWS",
    "REFINE_BELOW",
    "VARIANCE_PROPORTION",
    "Diagnostics",
    "LeastSquares",
    "RowPasses",
    "SufficientStatistics",
    "Summary",
    "choose_method",
    "collinear_groups",
    "correlation_spectrum",
    "diagnose",
    "hessian_eigenvalues",
    "lanczos_eigenvalues",
    "max_stable_lr",
    "raw_hessian_eigenvalues",
    "solve",
    "summarize",
    "train_mse",
]
