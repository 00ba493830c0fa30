"""What the project needs from one pass over the training rows: moments, the exact fit, diagnostics, inference.

One pass accumulates `SufficientStatistics` of A = [1, X - c_x, Y - c_y] (N, p), p = 1 + d + k, c the first row
seen: R, the triangular factor of A's QR decomposition, and the raw cross-products [1, X, Y]'[1, X, Y] in
double-double precision. Everything else is computed from those in O(p^3) at most, with no second pass over the
data. The pass costs one QR of the rows (LAPACK's dtpqrt, which keeps R's zeros out of the work) and, for the
exact sums, matrix products worth about 1.5 more; after it, one SVD without vectors gives the rank, the
conditioning and the diagnostics, and triangular solves the rest. Singular vectors (one more SVD) are computed
only for a rank-deficient or collinear design.

Above `EXACT_MAX_COLUMNS` no p x p matrix is formed: the pass keeps O(p) moments (`method="moments"`) and a
`RowPasses`, a way back to the rows, through which the least-squares answer (conjugate gradient) and the
Hessian's eigenvalues (Lanczos) come from matrix-vector passes over them.

One idea a module:

- `moments`: the one pass, `SufficientStatistics` (update, merge, to and from an array for DDP) and `choose_method`;
- `exact`: the double-double arithmetic behind the exact sums and the refined gradient;
- `passes`: `RowPasses`, matrix-vector products over the rows for statistics too wide for p x p matrices;
- `solve`: `LeastSquares`, `solve` (QR with refinement, or conjugate gradient) and `train_mse`;
- `aliasing`: which columns of a rank-deficient design are estimable, as R's lm keeps them, and the others;
- `diagnostics`: `Diagnostics`, `diagnose`, the Hessian's and the correlation matrix's spectra, collinear groups;
- `inference`: `Summary`, `summarize`, as R's summary(lm) and statsmodels' OLS report a fit.

The limits below choose between the paths. The modules read them through this package when they run
(`statistics.EXACT_MAX_COLUMNS`), never as a copy of their own, so that setting one here, as a test does to make
a small table "wide", reaches every use. Importing the package imports numpy only; scipy's LAPACK and
distributions are imported where they are used, so that it stays fast.
"""

from lit_linreg.statistics.diagnostics import (
    Diagnostics,
    collinear_groups,
    correlation_spectrum,
    diagnose,
    hessian_eigenvalues,
    lanczos_eigenvalues,
    max_stable_lr,
    raw_hessian_eigenvalues,
)
from lit_linreg.statistics.inference import Summary, summarize
from lit_linreg.statistics.moments import SufficientStatistics, choose_method
from lit_linreg.statistics.passes import RowPasses
from lit_linreg.statistics.solve import LeastSquares, solve, train_mse

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
