"""Aliased columns, as R's lm finds them: which columns of a rank-deficient design are estimable, what each of the
others is a combination of, and any coefficients moved onto the estimable ones.

A design with a constant column beside the intercept, or a column that is a combination of others (b = 2a), has
no unique least-squares answer: any split of the weight between the intercept and the constant, or between a and
b, fits equally well. As R's lm, the columns are kept in order, the intercept first, and a column that is, to
rounding, a combination of those kept before it is aliased: its coefficient is not estimable (R's NA), fixed at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def kept_columns(t: np.ndarray, tol: float) -> np.ndarray:
    """The columns of the upper triangle t (q, q) kept in order, each unless it lies within tol of the span of those
    kept before it.

    As R's lm (LINPACK's dqrdc2 with its limited pivoting) keeps them, so that the first of two equal columns
    stays and the later one is aliased. Once every column before j is kept, the distance of column j from their
    span is |t_jj|; an aliased column is deleted from the triangle, which Givens rotations make triangular again
    (`qr_delete`, O(q^2)): O(q^2) a column aliased, a second for 2,047 columns.
    """
    from scipy.linalg import qr_delete

    r, q = np.array(t, dtype=np.float64), np.eye(t.shape[0])
    kept, j = list(range(t.shape[1])), 0
    while j < r.shape[1]:
        if abs(r[j, j]) > tol:
            j += 1
            continue
        q, r = qr_delete(q, r, j, which="col", overwrite_qr=True, check_finite=False)
        del kept[j]
    return np.array(kept, dtype=np.intp)


def alias_matrix(beta: np.ndarray, kept: np.ndarray, scale: np.ndarray, mean: np.ndarray, centred: bool) -> np.ndarray:
    """Each aliased column as a combination (a, 1 + d) of [1, X] in raw units: x_j = A_j0 + sum_k A_jk x_k.

    beta (r, a) gives the aliased columns in the kept ones in standardized units, z_j = sum_k beta_kj z_k with
    z = x / s, or z = (x - m) / s when `centred` (a design with an intercept), whose means then make up the
    constant; a constant that is their rounding (below 1e-9 of them) is 0.
    """
    d = len(scale)
    aliased = np.setdiff1d(np.arange(d), kept)
    alias = np.zeros((len(aliased), 1 + d))
    alias[:, 1 + kept] = (beta * scale[aliased] / scale[kept, None]).T
    if centred:
        alias[:, 0] = mean[aliased] - alias[:, 1:] @ mean
        alias[np.abs(alias[:, 0]) <= 1e-9 * (np.abs(mean[aliased]) + np.abs(alias[:, 1:]) @ np.abs(mean)), 0] = 0.0
    return alias


def fold(weight: np.ndarray, bias: np.ndarray, aliased: Sequence[int], alias: np.ndarray) -> tuple:
    """weight (k, d) and bias (k,) with each aliased column's weight moved onto the columns it is a combination of
    (`alias_matrix`), its constant onto the bias, and the aliased weights 0: the same predictions."""
    moved = weight[:, list(aliased)]  # (k, a)
    weight = weight.copy()
    weight[:, list(aliased)] = 0.0
    return weight + moved @ alias[:, 1:], bias + moved @ alias[:, 0]


def describe(aliased: Sequence[int], alias: np.ndarray, names: Sequence[str], most: int = 8) -> str:
    """One line, as R's summary(lm) says "2 not defined because of singularities", naming each aliased column and
    what it is a combination of: `... (NA): b = 2·a; c = 1 (constant)`."""
    said = [_combination(list(names), j, row) for j, row in zip(aliased[:most], alias, strict=False)]
    more = f"; and {len(aliased) - most} more" if len(aliased) > most else ""
    return f"{len(aliased)} not defined because of singularities (NA): {'; '.join(said)}{more}"


def _combination(names: list[str], j: int, alias: np.ndarray) -> str:
    """`b = 2·a - 0.5·x + 3`: aliased feature j as the combination `alias` (1 + d,) of [1, X], to 4 digits;
    a coefficient below 1e-9 of the largest, rounding, left out."""
    coefficients = alias[1:]
    terms = [(c, names[i]) for i, c in enumerate(coefficients) if abs(c) > 1e-9 * np.abs(coefficients).max()]
    if alias[0] != 0.0:
        terms.append((alias[0], ""))
    text = "".join(
        ("-" if c < 0 else "") * (i == 0)
        + (" - " if c < 0 else " + ") * (i > 0)
        + (name if name and f"{abs(c):.4g}" == "1" else f"{abs(c):.4g}" + (f"·{name}" if name else ""))
        for i, (c, name) in enumerate(terms)
    )
    if all(not name for _, name in terms):  # a constant column beside the intercept
        return f"{names[j]} = {text or 0} (constant)"
    return f"{names[j]} = {text}"
