"""Exact sums in double-double arithmetic: the cross-products [1, X, Y]'[1, X, Y] and the gradient refined against them.

A value kept as hi + lo carries about 106 bits. `_add_exact_products` sums each value's leading 20 bits' products
exactly (Ozaki's error-free splitting) and the rest to about 2^-73 of the largest; `_exact_gradient` forms
A'(Y - A theta), which cancels to near zero at the optimum, before rounding it. The sums live as the lower
triangle of a symmetric matrix, row by row: (2, p (p + 1) / 2), hi then lo.
"""

from __future__ import annotations

import numpy as np

_SLICE_BITS = 20  # leading bits of each value whose products are summed exactly
_EXACT_ROWS = 1 << (53 - 2 * _SLICE_BITS)  # rows per exact product: 2^(2 * 20) * 8192 <= 2^53 keeps every sum exact
_PANEL = 128  # rows of the exact sums updated at once: the temporaries stay (128, p), never (p, p)
_PANEL_VALUES = 1 << 18  # values of a (q, w, k) temporary of the double-double gradient


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a + b as s + e exactly, s = fl(a + b) (Knuth)."""
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


def _two_product(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a * b as p + e exactly, p = fl(a * b) (Dekker: each factor split into two 26-bit halves)."""

    def split(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = 134217729.0 * v  # 2^27 + 1
        high = t - (t - v)
        return high, v - high

    p = a * b
    (ah, al), (bh, bl) = split(a), split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _add_double_double(total: np.ndarray, term: np.ndarray) -> None:
    """total (2, ...) = hi + lo += term, in place."""
    total[0], error = _two_sum(total[0], term)
    total[1] += error


def _add_exact_products(total: np.ndarray, x: np.ndarray, y: np.ndarray, work: np.ndarray) -> None:
    """total (2, p (p + 1) / 2), the lower triangle of A'A row by row, += that of the rows A = [1, x, y] (B, p).

    Each value is split as v = h + l, h its leading `_SLICE_BITS` bits on a grid of 2^-20 of its column's
    largest entry, l the rest, exactly (Ozaki's error-free splitting). A product of two h has at most 40
    significant bits on its pair of columns' grid, so BLAS sums up to `_EXACT_ROWS` of them exactly. The rest,
    H'L + L'H + L'L = M'L + L'M with M = H + L / 2, is of the order of 2^-20 of the whole and summed in float64,
    within about 2^-73 of it: three (p, p) products a block, in row panels that keep the temporaries
    (`_PANEL`, p), in `work`'s memory. The exact part is added in double-double; lo also takes the rest.
    The products go to scipy's BLAS, as dtpqrt does: numpy's is another thread pool, and two pools taking turns
    spin on the cores each other needs (20 times slower on a busy 2-core machine).
    """
    from scipy.linalg.blas import dgemm

    p, d = 1 + x.shape[1] + y.shape[1], x.shape[1]
    step = min(_EXACT_ROWS, len(work) // (3 * p))
    for start in range(0, len(x), step):
        b = min(step, len(x) - start)
        rows, high, low = (work[i * b * p : (i + 1) * b * p].reshape((b, p), order="F") for i in range(3))
        rows[:, 0] = 1.0
        rows[:, 1 : 1 + d], rows[:, 1 + d :] = x[start : start + b], y[start : start + b]
        exponent = np.frexp(np.maximum(rows.max(0), -rows.min(0)))[1]  # (p,) every |v| < 2^exponent
        sigma = np.ldexp(0.75, exponent + 53 - _SLICE_BITS)  # its ulp is 2^(exponent - 20): v + sigma rounds v to it
        np.add(rows, sigma, out=high)
        high -= sigma
        np.subtract(rows, high, out=low)
        np.multiply(low, 0.5, out=rows)
        rows += high  # M = H + L / 2
        for i in range(0, p, _PANEL):  # each product is used, then let go, before the next is made
            panel, left = slice(i, min(i + _PANEL, p)), slice(0, min(i + _PANEL, p))  # rows, the columns up to them
            lower = np.arange(left.stop)[None, :] <= np.arange(panel.start, panel.stop)[:, None]  # (w, i + w)
            at = slice(_lower_index(panel.start, 0), _lower_index(panel.stop, 0))
            hi, lo = total[0, at], total[1, at]
            hi[...], error = _two_sum(hi, dgemm(1.0, high[:, panel], high[:, left], trans_a=1)[lower])
            lo += error
            del error
            rest = dgemm(1.0, rows[:, panel], low[:, left], trans_a=1)  # M'L, then + L'M = (M'L)'
            rest = dgemm(1.0, low[:, panel], rows[:, left], 1.0, rest, trans_a=1, overwrite_c=1)
            lo += rest[lower]


def _lower_index(i, j):
    """Where entry (i, j) of a symmetric matrix sits in its lower triangle stored row by row."""
    row, column = np.maximum(i, j), np.minimum(i, j)
    return row * (row + 1) // 2 + column


def _symmetric_block(packed: np.ndarray, rows: slice, columns: slice) -> np.ndarray:
    """The block (rows, columns) of the symmetric matrix whose lower triangle `packed` holds row by row."""
    return packed[_lower_index(np.arange(rows.start, rows.stop)[:, None], np.arange(columns.start, columns.stop))]


def _sum_double_double(high: np.ndarray, low: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """high + low summed along axis 1, as a double-double: halves added pairwise, each sum error-free (Knuth)."""
    while high.shape[1] > 1:
        half = high.shape[1] // 2
        total, error = _two_sum(high[:, :half], high[:, half : 2 * half])
        error += low[:, :half]
        error += low[:, half : 2 * half]
        high, low = np.concatenate([total, high[:, 2 * half :]], 1), np.concatenate([error, low[:, 2 * half :]], 1)
    return high[:, 0], low[:, 0]


def _exact_gradient(exact: np.ndarray, design: slice, targets: slice, theta: np.ndarray) -> np.ndarray:
    """A'(Y - A theta) (q, k) for the raw design columns `design` and theta (q, k), from the exact sums.

    At the optimum this is 0 while A'Y and A'A theta are large, so it is summed in double-double before
    rounding: every product hi * theta exactly (Dekker), in panels of columns of A'A.
    """
    hi, lo = exact[0], exact[1]
    q, k = theta.shape
    total, low = _symmetric_block(hi, design, targets), _symmetric_block(lo, design, targets)  # A'Y (q, k)
    width = max(1, _PANEL_VALUES // (q * k))
    for j in range(0, q, width):
        panel = slice(design.start + j, design.start + min(j + width, q))
        coefficient = -theta[j : j + width][None]  # (1, w, k)
        product, error = _two_product(_symmetric_block(hi, design, panel)[..., None], coefficient)  # (q, w, k)
        error += _symmetric_block(lo, design, panel)[..., None] * coefficient
        product, error = _sum_double_double(product, error)
        total, carry = _two_sum(total, product)
        low += carry
        low += error
    return total + low
