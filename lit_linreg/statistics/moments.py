"""The one pass over the training rows: blockwise, mergeable sufficient statistics of [1, X, Y].

`SufficientStatistics` accumulates, for A = [1, X - c_x, Y - c_y] (N, p), p = 1 + d + k, c the first row seen:

- R, the triangular factor of A's QR decomposition. A'A = R'R, so R carries N, the column sums and every
  cross-product, but solving from R keeps the condition number of the problem instead of squaring it as the
  normal equations do. Shifting by a row of the data keeps the columns small when mean >> std, and makes a
  constant column exactly zero.
- The raw cross-products [1, X, Y]'[1, X, Y] in double-double precision (see `exact`), for the refinement that
  recovers the digits a float64 QR loses on a problem whose residual dwarfs its fit.

Taller tables than `QR_MAX_ROWS` keep A'A in float64 instead ("gram"); wider ones than `EXACT_MAX_COLUMNS` keep
O(p) moments ("moments") and a `RowPasses` back to the rows. Shapes: N rows, d features, k targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lit_linreg import statistics  # the limits, read through the package when they are used
from lit_linreg.statistics.exact import _add_double_double, _add_exact_products, _symmetric_block
from lit_linreg.statistics.passes import _PASS_VALUES, RowPasses

_METHODS = ("qr", "gram", "moments")
_HEADER = 4  # to_array: d, k, method, N; then the shift, then the upper triangles of the state and exact sums
_QR_BLOCK = 64  # columns per Householder block of dtpqrt
_LARGEST = 2.0**480  # larger values could overflow a sum of squares of 2^64 rows


def choose_method(n_rows: int, n_columns: int) -> str:
    """ "moments" above `EXACT_MAX_COLUMNS` columns of [1, X, Y]; else "qr" up to `QR_MAX_ROWS` rows, "gram" above."""
    if n_columns > statistics.EXACT_MAX_COLUMNS:
        return "moments"
    return "qr" if n_rows <= statistics.QR_MAX_ROWS else "gram"


class SufficientStatistics:
    """Blockwise, mergeable sufficient statistics of a regression table.

    Feed blocks with `update`; combine ranks with `merge` or `combine`. Under DDP every rank sends `to_array()`
    (the same length on every rank, N = 0 included) through `all_gather` and builds the total with
    `SufficientStatistics.combine([SufficientStatistics.from_array(a) for a in gathered])`: a stack of the ranks'
    R factors and one more QR. (QR factors do not add, so `all_reduce` does not apply.)

    `update` costs a QR of the (p + B, p) stack of R over the block, with R's zeros left out (LAPACK's dtpqrt),
    plus three (p, p) products of the block's rows for the exact sums: about 2.5 QRs of the block, O(B p^2).

    Args:
        n_features: d, the columns of x.
        n_targets: k, the columns of y.
        method: "qr" keeps R and the exact sums; "gram" keeps A'A in float64 (see `QR_MAX_ROWS`); "moments"
            keeps O(p): the means, the centred sums of squares and the centred cross-products of each target
            with [X, Y], merged as Chan, Golub & LeVeque do, and needs `rows` for a solve (see `RowPasses`);
            "auto" picks "qr" up to `EXACT_MAX_COLUMNS` columns, "moments" above.

    Attributes:
        rows: A `RowPasses` over the same rows, set by whoever made the pass; used in "moments" mode only.
    """

    def __init__(self, n_features: int, n_targets: int = 1, method: str = "auto") -> None:
        if method not in ("auto", *_METHODS):
            raise ValueError(f"method must be 'auto', 'qr' or 'gram', got {method!r}")
        if n_features < 1 or n_targets < 1:
            raise ValueError(f"need n_features >= 1 and n_targets >= 1, got {n_features} and {n_targets}")
        self.n_features, self.n_targets = n_features, n_targets
        p = 1 + n_features + n_targets
        self.method = ("moments" if p > statistics.EXACT_MAX_COLUMNS else "qr") if method == "auto" else method
        self.n = 0
        self.shift = np.zeros(n_features + n_targets)  # (d + k,) c, the first row seen; the mean in "moments" mode
        self.rows: RowPasses | None = None
        if self.method == "moments":  # (1 + k, d + k): centred sums of squares, then Y_c'[X, Y]_c row by row
            self._state = np.zeros((1 + n_targets, n_features + n_targets))
        else:  # Fortran order, as LAPACK updates it in place
            self._state = np.zeros((p, p), order="F")  # R, or A'A in "gram" mode, of [1, A - c]
        # [1, X, Y]'[1, X, Y] as hi + lo, its lower triangle row by row: (2, p (p + 1) / 2), half of (2, p, p)
        self._exact = np.zeros((2, p * (p + 1) // 2)) if self.method == "qr" else None
        self._factor: np.ndarray | None = None
        self._cache: dict = {}  # what the solves and diagnostics derive from the state: spectra, means, fits

    @property
    def width(self) -> int:
        """p = 1 + d + k, the columns of [1, X, Y]."""
        return 1 + self.n_features + self.n_targets

    def update(self, x: np.ndarray, y: np.ndarray) -> SufficientStatistics:
        """Adds a block of rows: x (B, d) and y (B, k) or (B,). Returns self."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        y = y[:, None] if y.ndim == 1 else y
        if x.ndim != 2 or x.shape[1] != self.n_features or y.shape != (len(x), self.n_targets):
            raise ValueError(
                f"expected x (B, {self.n_features}) and y (B, {self.n_targets}), got {x.shape} and {y.shape}"
            )
        if len(x) == 0:
            return self
        largest = max(np.max(x), -np.min(x), np.max(y), -np.min(y))  # NaN if any is NaN; no (B, p) temporary
        if not largest < _LARGEST:
            raise ValueError(
                "x and y must be finite and below 1e144 in magnitude: a NaN, an inf or an overflowing square"
                " would spoil every statistic"
            )
        self._factor, self._cache = None, {}
        if self.method == "moments":  # in sub-blocks, so the temporaries stay small whatever the width
            step, d = max(1, _PASS_VALUES // self.width), self.n_features
            for start in range(0, len(x), step):
                block = np.hstack([x[start : start + step], y[start : start + step]])
                self.shift, self._state = _merge_moments((self.n, self.shift, self._state), _block_moments(block, d))
                self.n += len(block)
            return self
        if self.n == 0:
            self.shift = np.concatenate([x[0], y[0]])
        if self.method == "qr":
            self._state = _update_qr(self._state, self._exact, self.shift, x, y)
        else:  # one copy, shifted in place: the pass over a tall table costs about what X'X does
            block = self._scratch(len(x))
            block[:, 0] = 1.0
            np.subtract(x, self.shift[: self.n_features], out=block[:, 1 : 1 + self.n_features])
            np.subtract(y, self.shift[self.n_features :], out=block[:, 1 + self.n_features :])
            self._state += block.T @ block
        self.n += len(x)
        return self

    def _scratch(self, rows: int) -> np.ndarray:
        """A (rows, p) float64 work array, reused from block to block: a fresh one would cost its page faults
        at every update, and the allocator may keep each freed one resident."""
        if getattr(self, "_work", None) is None or len(self._work) < rows:
            self._work = np.empty((rows, self.width))
        return self._work[:rows]

    def merge(self, other: SufficientStatistics) -> SufficientStatistics:
        """Adds another accumulator's rows to this one. Returns self."""
        vars(self).update(vars(SufficientStatistics.combine([self, other])))
        return self

    @classmethod
    def combine(cls, parts: Sequence[SufficientStatistics]) -> SufficientStatistics:
        """The statistics of all the parts' rows together, with one QR of their stacked factors."""
        first = parts[0]
        for part in parts:
            if (part.n_features, part.n_targets, part.method) != (first.n_features, first.n_targets, first.method):
                raise ValueError("cannot combine statistics of different widths or methods")
        total = cls(first.n_features, first.n_targets, first.method)
        filled = [part for part in parts if part.n > 0]
        if not filled:
            return total
        if total.method == "moments":
            for part in filled:
                total.shift, total._state = _merge_moments(
                    (total.n, total.shift, total._state), (part.n, part.shift, part._state)
                )
                total.n += part.n
            return total
        total.shift = filled[0].shift.copy()
        states = [_reshift(part._state, part.method, part.n, total.shift - part.shift) for part in filled]
        total._state = _triangular(np.vstack(states)) if total.method == "qr" else np.sum(states, axis=0)
        if total._exact is not None:
            for part in filled:
                _add_double_double(total._exact, part._exact[0])
                total._exact[1] += part._exact[1]
        total.n = sum(part.n for part in filled)
        return total

    def to_array(self) -> np.ndarray:
        """Everything in one float64 vector, for `torch.distributed.all_gather`."""
        return _to_array(self)

    @classmethod
    def from_array(cls, array: np.ndarray) -> SufficientStatistics:
        """Rebuilds the statistics `to_array` flattened."""
        return _from_array(cls, array)

    def factor(self) -> np.ndarray:
        """R (p, p), upper triangular with a non-negative diagonal: R'R = A'A for A = [1, X - c_x, Y - c_y]."""
        if self.n == 0:
            raise ValueError("no rows accumulated yet")
        if self.method == "moments":
            raise ValueError(
                f"{self.width} columns > EXACT_MAX_COLUMNS = {statistics.EXACT_MAX_COLUMNS}: no p x p factor kept"
            )
        if self._factor is None:
            self._factor = self._state if self.method == "qr" else _triangular_root(self._state)
        return self._factor

    @property
    def mean(self) -> np.ndarray:
        """(d + k,) column means of [X, Y]: the shift plus the mean of the shifted columns."""
        if self.method == "moments":
            return self.shift.copy()
        if "mean" not in self._cache:
            r = self.factor()
            self._cache["mean"] = self.shift + r[0, 1:] / r[0, 0]
        return self._cache["mean"].copy()

    @property
    def std(self) -> np.ndarray:
        """(d + k,) population standard deviations (ddof 0) of [X, Y]; 1 for a constant column.

        Rows 1: of R hold the columns centred on their exact mean, so no sum of squares minus a squared mean
        (which cancels catastrophically when mean >> std) is ever formed.
        """
        if "std" not in self._cache:
            if self.method == "moments":
                std = np.sqrt(self._state[0] / self.n)
            else:
                r = self.factor()[1:, 1:]
                std = np.sqrt(np.einsum("ij,ij->j", r, r) / self.n)  # column norms, with no (p, p) temporary
            self._cache["std"] = np.where(std > 0, std, 1.0)
        return self._cache["std"].copy()

    @property
    def x_mean(self) -> np.ndarray:
        return self.mean[: self.n_features]

    @property
    def y_mean(self) -> np.ndarray:
        return self.mean[self.n_features :]

    @property
    def x_std(self) -> np.ndarray:
        return self.std[: self.n_features]

    @property
    def y_std(self) -> np.ndarray:
        return self.std[self.n_features :]

    def gram(self) -> np.ndarray:
        """[1, X, Y]'[1, X, Y] (p, p) in raw units: N, the column sums, X'X, X'Y and Y'Y are its blocks."""
        if self._exact is not None:
            return _symmetric_block(self._exact[0] + self._exact[1], slice(0, self.width), slice(0, self.width))
        if self.method == "moments":
            raise ValueError(
                f"{self.width} columns > EXACT_MAX_COLUMNS = {statistics.EXACT_MAX_COLUMNS}: no Gram matrix kept"
            )
        return _reshift(self._state, "gram", self.n, -self.shift)


def _update_qr(state: np.ndarray, exact: np.ndarray, shift: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """R of the stack [R; 1, x - c] and the exact sums of [1, x, y], in sub-blocks of `_PASS_VALUES` values.

    LAPACK's dtpqrt factors the stack as a triangle over a rectangle, so R's zeros cost nothing: a pass costs
    about one QR of all the rows. One work array serves both halves, and is let go at the end: after the
    pass, only R and the exact sums stay. Returns R (p, p), in `state`'s memory; `exact` is updated in place.
    """
    from scipy.linalg import lapack

    p, d = len(state), x.shape[1]
    rows = max(1, _PASS_VALUES // p)
    work = np.empty(max(min(len(x), rows), 3) * p)
    for start in range(0, len(x), rows):
        part_x, part_y = x[start : start + rows], y[start : start + rows]
        block = work[: len(part_x) * p].reshape((len(part_x), p), order="F")  # (b, p) [1, x - c], as LAPACK reads
        block[:, 0] = 1.0
        np.subtract(part_x, shift[:d], out=block[:, 1 : 1 + d])
        np.subtract(part_y, shift[d:], out=block[:, 1 + d :])
        # in place: the R returned is `state`'s own memory, which is in Fortran order
        state, _, _, info = lapack.dtpqrt(0, min(p, _QR_BLOCK), state, block, overwrite_a=1, overwrite_b=1)
        if info != 0:
            raise RuntimeError(f"LAPACK dtpqrt failed with info={info}")
        _add_exact_products(exact, part_x, part_y, work)
    state *= np.where(np.diag(state) < 0, -1.0, 1.0)[:, None]  # rows of R flipped keep R'R
    return state


def _block_moments(block: np.ndarray, n_features: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(B, mean (d + k,), state (1 + k, d + k)) of a block (B, d + k) of [x, y] alone, for `_merge_moments`."""
    mean = block.mean(axis=0)
    centred = block - mean
    state = np.vstack([np.square(centred).sum(0), centred[:, n_features:].T @ centred])
    if not np.isfinite(state).all():
        raise ValueError("x and y must be finite: a NaN or inf would spoil every statistic")
    return len(block), mean, state


def _merge_moments(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The mean and state of two sets of rows, each (n, mean (d + k,), state (1 + k, d + k)); Chan et al. (1979)."""
    (n_a, mean_a, state_a), (n_b, mean_b, state_b) = a, b
    if n_a == 0:
        return mean_b.copy(), state_b.copy()
    n, delta = n_a + n_b, mean_b - mean_a
    k = len(state_a) - 1
    correction = np.outer(delta[-k:], delta) * (n_a * n_b / n)  # (k, d + k)
    state = state_a + state_b + np.vstack([np.square(delta) * (n_a * n_b / n), correction])
    return mean_a + delta * (n_b / n), state


def _to_array(stats: SufficientStatistics) -> np.ndarray:
    """`SufficientStatistics.to_array`: the header (d, k, method, N), the shift, then the state (its upper
    triangle unless "moments") and the exact sums."""
    header = [stats.n_features, stats.n_targets, _METHODS.index(stats.method), stats.n]
    if stats.method == "moments":
        return np.concatenate([np.asarray(header, dtype=np.float64), stats.shift, stats._state.ravel()])
    parts = [stats._state[np.triu_indices(stats.width)], *([] if stats._exact is None else stats._exact)]
    return np.concatenate([np.asarray(header, dtype=np.float64), stats.shift, *parts])


def _from_array(cls: type[SufficientStatistics], array: np.ndarray) -> SufficientStatistics:
    """`SufficientStatistics.from_array`: the statistics `_to_array` flattened, rebuilt as a `cls`."""
    array = np.asarray(array, dtype=np.float64)
    d, k, method, n = (int(v) for v in array[:_HEADER])
    stats = cls(d, k, _METHODS[method])
    if stats.method == "moments":
        if array.size != _HEADER + d + k + stats._state.size:
            raise ValueError(f"an array of {array.size} values is not the flattened statistics of d={d}, k={k}")
        stats.n, stats.shift = n, array[_HEADER : _HEADER + d + k].copy()
        stats._state = array[_HEADER + d + k :].reshape(stats._state.shape).copy()
        return stats
    size = stats.width * (stats.width + 1) // 2
    if array.size != _HEADER + d + k + size * (1 if stats._exact is None else 3):
        raise ValueError(f"an array of {array.size} values is not the flattened statistics of d={d}, k={k}")
    stats.n, stats.shift = n, array[_HEADER : _HEADER + d + k].copy()
    start = _HEADER + d + k
    stats._state[np.triu_indices(stats.width)] = array[start : start + size]
    if stats.method == "gram":
        stats._state += np.triu(stats._state, 1).T
    else:
        stats._exact = array[start + size :].reshape(2, size).copy()
    return stats


def _triangular(a: np.ndarray) -> np.ndarray:
    """R of a (m, n), m >= n, with its diagonal made non-negative (flipping rows of R keeps R'R)."""
    r = np.linalg.qr(a, mode="r")
    return r * np.where(np.diag(r) < 0, -1.0, 1.0)[:, None]


def _triangular_root(gram: np.ndarray) -> np.ndarray:
    """A square root (p, p) of A'A made triangular: a Cholesky factor that a singular A'A does not stop."""
    keep = np.flatnonzero(np.diag(gram) > 0)  # a constant column's zeros stay exact
    eigenvalues, vectors = np.linalg.eigh(gram[np.ix_(keep, keep)])
    factor = np.zeros_like(gram)
    root = np.sqrt(np.clip(eigenvalues, 0, None))[:, None] * vectors.T
    factor[np.ix_(keep, keep)] = _triangular(root)
    return factor


def _reshift(state: np.ndarray, method: str, n: int, delta: np.ndarray) -> np.ndarray:
    """The state of [1, A - c - delta] from that of [1, A - c]: each column loses delta_j times the ones column."""
    state = state.copy()
    if method == "qr":  # column 0 of R is (sqrt(N), 0, ..., 0), so only row 0 changes
        state[0, 1:] -= delta * state[0, 0]
    else:
        u = np.concatenate([[0.0], delta])
        state -= np.outer(state[:, 0], u) + np.outer(u, state[0, :]) - n * np.outer(u, u)
    return state


def _uncentred(stats: SufficientStatistics) -> np.ndarray:
    """R (p, p) of the raw [1, X, Y], from that of [1, X - c_x, Y - c_y]: the shift goes back into row 0."""
    return _reshift(stats.factor(), "qr", stats.n, -stats.shift)
