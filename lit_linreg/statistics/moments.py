"""What the project needs from one pass over the training rows: moments, the exact fit, diagnostics, inference.

One pass accumulates `SufficientStatistics` of A = [1, X - c_x, Y - c_y] (N, p), p = 1 + d + k, where c is the
first row seen:

- R, the triangular factor of A's QR decomposition. A'A = R'R, so R carries N, the column sums and every
  cross-product, but solving from R keeps the condition number of the problem instead of squaring it as the
  normal equations do. Shifting by a row of the data keeps the columns small when mean >> std, and makes a
  constant column exactly zero.
- The raw cross-products [1, X, Y]'[1, X, Y] in double-double precision, their lower triangle: the products of
  each value's leading 20 bits summed exactly, the rest to about 2^-73 of the largest. A float64 QR is backward
  stable, which still costs digits on a problem whose residual dwarfs its fit (NIST's Wampler5 keeps 6 of 15); a
  step or two of iterative refinement against these sums recovers them.

Everything below is computed from those in O(p^3) at most, with no second pass over the data. The pass costs
one QR of the rows (LAPACK's dtpqrt, which keeps R's zeros out of the work) and, for the exact sums, matrix
products worth about 1.5 more; after it, one SVD without vectors gives the rank, the conditioning and the
diagnostics, and triangular solves the rest. Singular vectors (one more SVD) are computed only for a
rank-deficient or collinear design.

Above `EXACT_MAX_COLUMNS` no p x p matrix is formed: the pass keeps O(p) moments (`method="moments"`) and a
`RowPasses`, a way back to the rows, through which the least-squares answer (conjugate gradient) and the
Hessian's eigenvalues (Lanczos) come from matrix-vector passes over them.
Shapes: N rows, d features, k targets, q design columns (1 + d with an intercept, d without).
numpy is imported here; scipy's LAPACK and distributions where they are used, so importing this module stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lit_linreg import statistics  # the limits, read through the package at call time (see its docstring)

_METHODS = ("qr", "gram", "moments")
_HEADER = 4  # to_array: d, k, method, N; then the shift, then the upper triangles of the state and exact sums
_PASS_VALUES = 1 << 22  # values of [X, Y] per sub-block of a row pass: 32 MB of float64 temporaries
_SLICE_BITS = 20  # leading bits of each value whose products are summed exactly
_EXACT_ROWS = 1 << (53 - 2 * _SLICE_BITS)  # rows per exact product: 2^(2 * 20) * 8192 <= 2^53 keeps every sum exact
_PANEL = 128  # rows of the exact sums updated at once: the temporaries stay (128, p), never (p, p)
_PANEL_VALUES = 1 << 18  # values of a (q, w, k) temporary of the double-double gradient
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
            step = max(1, _PASS_VALUES // self.width)
            for start in range(0, len(x), step):
                self._update_moments(np.hstack([x[start : start + step], y[start : start + step]]))
            return self
        if self.n == 0:
            self.shift = np.concatenate([x[0], y[0]])
        if self.method == "qr":
            self._update_qr(x, y)
        else:  # one copy, shifted in place: the pass over a tall table costs about what X'X does
            block = self._scratch(len(x))
            block[:, 0] = 1.0
            np.subtract(x, self.shift[: self.n_features], out=block[:, 1 : 1 + self.n_features])
            np.subtract(y, self.shift[self.n_features :], out=block[:, 1 + self.n_features :])
            self._state += block.T @ block
        self.n += len(x)
        return self

    def _update_qr(self, x: np.ndarray, y: np.ndarray) -> None:
        """R of the stack [R; 1, x - c] and the exact sums of [1, x, y], in sub-blocks of `_PASS_VALUES` values.

        LAPACK's dtpqrt factors the stack as a triangle over a rectangle, so R's zeros cost nothing: a pass costs
        about one QR of all the rows. One work array serves both halves, and is let go at the end: after the
        pass, only R and the exact sums stay.
        """
        from scipy.linalg import lapack

        p, d = self.width, self.n_features
        rows = max(1, _PASS_VALUES // p)
        work = np.empty(max(min(len(x), rows), 3) * p)
        for start in range(0, len(x), rows):
            part_x, part_y = x[start : start + rows], y[start : start + rows]
            block = work[: len(part_x) * p].reshape((len(part_x), p), order="F")  # (b, p) [1, x - c], as LAPACK reads
            block[:, 0] = 1.0
            np.subtract(part_x, self.shift[:d], out=block[:, 1 : 1 + d])
            np.subtract(part_y, self.shift[d:], out=block[:, 1 + d :])
            state, _, _, info = lapack.dtpqrt(0, min(p, _QR_BLOCK), self._state, block, overwrite_a=1, overwrite_b=1)
            if info != 0:
                raise RuntimeError(f"LAPACK dtpqrt failed with info={info}")
            self._state = state  # the same memory once it is in Fortran order
            _add_exact_products(self._exact, part_x, part_y, work)
        self._state *= np.where(np.diag(self._state) < 0, -1.0, 1.0)[:, None]  # rows of R flipped keep R'R

    def _scratch(self, rows: int) -> np.ndarray:
        """A (rows, p) float64 work array, reused from block to block: a fresh one would cost its page faults
        at every update, and the allocator may keep each freed one resident."""
        if getattr(self, "_work", None) is None or len(self._work) < rows:
            self._work = np.empty((rows, self.width))
        return self._work[:rows]

    def _update_moments(self, block: np.ndarray) -> None:
        """Adds a block (B, d + k) of [x, y] to the moments: its own centred sums, then Chan's merge."""
        mean = block.mean(axis=0)
        centred = block - mean
        state = np.vstack([np.square(centred).sum(0), centred[:, self.n_features :].T @ centred])
        if not np.isfinite(state).all():
            raise ValueError("x and y must be finite: a NaN or inf would spoil every statistic")
        self.shift, self._state = _merge_moments((self.n, self.shift, self._state), (len(block), mean, state))
        self.n += len(block)

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
        header = [self.n_features, self.n_targets, _METHODS.index(self.method), self.n]
        if self.method == "moments":
            return np.concatenate([np.asarray(header, dtype=np.float64), self.shift, self._state.ravel()])
        parts = [self._state[np.triu_indices(self.width)], *([] if self._exact is None else self._exact)]
        return np.concatenate([np.asarray(header, dtype=np.float64), self.shift, *parts])

    @classmethod
    def from_array(cls, array: np.ndarray) -> SufficientStatistics:
        """Rebuilds the statistics `to_array` flattened."""
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

    def factor(self) -> np.ndarray:
        """R (p, p), upper triangular with a non-negative diagonal: R'R = A'A for A = [1, X - c_x, Y - c_y]."""
        if self.n == 0:
            raise ValueError("no rows accumulated yet")
        if self.method == "moments":
            raise ValueError(
                f"{self.width} columns > EXACT_MAX_COLUMNS = {statistics.EXACT_MAX_COLUMNS}: no p x p factor kept"
            )
        if self._factor is None:
            if self.method == "qr":
                self._factor = self._state
            else:  # a square root of A'A made triangular: a Cholesky factor that a singular A'A does not stop
                keep = np.flatnonzero(np.diag(self._state) > 0)  # a constant column's zeros stay exact
                eigenvalues, vectors = np.linalg.eigh(self._state[np.ix_(keep, keep)])
                self._factor = np.zeros_like(self._state)
                root = np.sqrt(np.clip(eigenvalues, 0, None))[:, None] * vectors.T
                self._factor[np.ix_(keep, keep)] = _triangular(root)
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


class RowPasses:
    """Matrix-vector passes over the training rows: how statistics too wide for X'X reach an answer.

    Each call is one pass, O(N d m), over every rank's rows (each rank its own share, summed by `reduce`).
    Every rank must make the same calls, as DDP's collectives do; the solvers here are deterministic.

    Args:
        blocks: Returns a fresh iterator over this rank's rows as (x (B, d), y (B, k)) float64 blocks, encoded
            as the model encodes them: the rows the statistics were accumulated from.
        mean: (d + k,) the column means of [X, Y] over every rank's rows.
        reduce: Sums an array over the ranks; the identity on one process.
    """

    def __init__(
        self,
        blocks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
        mean: np.ndarray,
        reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.blocks, self.mean, self.reduce = blocks, np.asarray(mean, dtype=np.float64), reduce or (lambda a: a)
        self.count = 0  # passes made so far

    def __call__(self, w: np.ndarray, targets: bool) -> tuple[np.ndarray, np.ndarray]:
        """X_c'(Y_c - X_c w) (d, m) and ||Y_c - X_c w||^2 (m,) for w (d, m), with Y_c = 0 unless `targets` (m = k).

        X_c, Y_c are the columns centred on `mean`; each block is cut into sub-blocks of `_PASS_VALUES`, so
        the temporaries stay small whatever the width.
        """
        d = len(w)
        mean_x, mean_y = self.mean[:d], self.mean[d:]
        gradient, squares = np.zeros(w.shape), np.zeros(w.shape[1])
        step = max(1, _PASS_VALUES // d)
        buffer = np.empty((step, d))  # reused: a fresh 32 MB array a sub-block costs its page faults every time
        for x, y in self.blocks():
            for start in range(0, len(x), step):
                rows = x[start : start + step]
                centred = np.subtract(rows, mean_x, out=buffer[: len(rows)])  # (b, d)
                residual = -(centred @ w)  # (b, m)
                if targets:
                    residual += y[start : start + step] - mean_y
                gradient += centred.T @ residual
                squares += np.square(residual).sum(0)
        total = self.reduce(np.concatenate([gradient.ravel(), squares]))
        self.count += 1
        return total[: gradient.size].reshape(gradient.shape), total[gradient.size :]


def _triangular(a: np.ndarray) -> np.ndarray:
    """R of a (m, n), m >= n, with its diagonal made non-negative (flipping rows of R keeps R'R)."""
    r = np.linalg.qr(a, mode="r")
    return r * np.where(np.diag(r) < 0, -1.0, 1.0)[:, None]


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


# ------------------------------------------------------------------------------- exact sums (double-double)


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


# ---------------------------------------------------------------------------------------------------- solve


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
    it; with an intercept it is also centred, so the intercept decouples. A full-rank solution is then refined
    against the exact sums (see `_refine`). A rank-deficient X (a duplicated or constant column) gets the
    minimum-norm solution in standardized units, the one full-batch gradient descent from zero on standardized
    data converges to: a constant column gets weight 0, duplicated columns share it equally.

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
    u, rank, cond = _min_norm(stats, fit_intercept, targets, rtol)  # (d, k) in standardized units
    w = u / scale[:, None]  # (d, k)
    bias = stats.y_mean - w.T @ stats.x_mean if fit_intercept else np.zeros(k)
    if stats.method == "qr" and cond**2 * np.finfo(np.float64).eps < statistics.REFINE_BELOW:
        triangle = stats.factor()[: 1 + d, : 1 + d] if fit_intercept else design
        theta = _refine(stats, fit_intercept, np.vstack([bias, w]) if fit_intercept else w, triangle)
        w, bias = (theta[1:], theta[0]) if fit_intercept else (theta, bias)
    rank += fit_intercept
    sse = np.square(targets - design @ w).sum(0) + np.square(rest).sum(0)
    residual_sum = np.zeros(k) if fit_intercept else stats.n * (stats.y_mean - w.T @ stats.x_mean)
    stats._cache["fit", fit_intercept] = LeastSquares(
        weight=w.T,
        bias=bias,
        rank=rank,
        n=stats.n,
        sse=sse,
        fit_intercept=fit_intercept,
        _r=stats.factor()[: 1 + d, : 1 + d],
        _shift=stats.shift[:d],
        _residual_sum=residual_sum,
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


def _min_norm(stats: SufficientStatistics, fit_intercept: bool, b: np.ndarray, rtol: float) -> tuple:
    """Minimum-norm least-squares u (q, k) of T u = b, T = `_standardized` (q, q) upper triangular, b (q, k); the
    rank; the condition number.

    The singular values alone judge the rank (below rtol times the largest, q * eps is numpy's `matrix_rank`
    rule). Full rank: back substitution, the most accurate for an ill-conditioned triangle. Otherwise the
    truncated SVD, which needs the singular vectors.
    """
    singular = _design_svd(stats, fit_intercept)[1]
    rank = int((singular > singular[0] * rtol).sum())
    if rank == len(singular):
        return _solve_upper(_standardized(stats, fit_intercept), b), rank, singular[0] / singular[-1]
    left, singular, right = _design_svd(stats, fit_intercept, vectors=True)
    return right[:rank].T @ ((left[:, :rank].T @ b) / singular[:rank, None]), rank, np.inf


def _refine(stats: SufficientStatistics, fit_intercept: bool, theta: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Refines full-rank raw coefficients theta (q, k), [b; W'] or W': theta += (R'R)^-1 A'(Y - A theta).

    r is the design's triangle: of [1, X - c_x] with an intercept (the step is taken in its shifted
    coordinates), of the raw X without.

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
        step = _solve_upper(r, _solve_upper(r, gradient, transpose=True))
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


# ------------------------------------------------------------------------------------------------ diagnostics


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


# -------------------------------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class Summary:
    """One target's fit as R's summary(lm) and statsmodels' OLS report it.

    Per coefficient (the intercept first, named "(intercept)"): estimate, std_error, t_value, p_value
    (two-sided) and the confidence interval [conf_low, conf_high]; NaN where the residual degrees of freedom
    are not positive. Then the residual standard error, R^2, adjusted R^2, the F statistic against the model
    with no features (its p-value), N, and the residual and model degrees of freedom.
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

    def table(self) -> str:
        """The coefficient table and the fit's summary lines, as R prints them."""
        width = max(len(name) for name in self.names)
        lines = [f"{'':{width}}  {'Estimate':>12} {'Std. Error':>12} {'t value':>9} {'Pr(>|t|)':>10}"]
        for row in zip(self.names, self.estimate, self.std_error, self.t_value, self.p_value, strict=True):
            lines.append(f"{row[0]:{width}}  {row[1]:12.5g} {row[2]:12.5g} {row[3]:9.3f} {row[4]:10.3g}")
        return "\n".join(
            [
                *lines,
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

    Full rank: the estimates are `solve`'s; the variances s^2 diag((X'X)^-1) come from the inverse of the
    standardized triangle, as sums of squares that cannot cancel (for the intercept, s^2 (1/N + m'(S'S)^-1 m)
    with S the centred triangle). Rank-deficient, as statsmodels: the estimates are the minimum-norm solution
    in raw units, pinv([1, X]) y (not `solve`'s standardized one; the fitted values are the same), the
    covariance s^2 pinv pinv', and the degrees of freedom count rank(X). Without an intercept R^2 is uncentred
    (1 - SSE / y'y) and the F test is against the zero model, as statsmodels does for a model with no constant.

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
    if fit.rank == q:
        estimates = np.column_stack([fit.bias, fit.weight]) if fit_intercept else fit.weight  # (k, q)
        unit_variance = _unit_variances(stats, fit_intercept)
    else:
        estimates, unit_variance = _pinv_fit(stats, fit_intercept, fit.rank)
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
        )
        for i in range(k)
    ]


def _unit_variances(stats: SufficientStatistics, fit_intercept: bool) -> np.ndarray:
    """diag((X'X)^-1) (q,) of a full-rank design, from the inverse of its column-standardized triangle."""
    scale = stats.x_std
    inverse = _inverse_upper(_standardized(stats, fit_intercept))  # R_z^-1
    slopes = np.einsum("ij,ij->i", inverse, inverse) / np.square(scale)
    if not fit_intercept:
        return slopes
    intercept = 1.0 / stats.n + np.square(inverse.T @ (stats.x_mean / scale)).sum()  # 1/N + m'(S'S)^-1 m
    return np.concatenate([[intercept], slopes])


def _pinv_fit(stats: SufficientStatistics, fit_intercept: bool, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """pinv(A) Y (k, q) and diag(pinv(A) pinv(A)') (q,) of the raw design A, from its `rank` largest singular values."""
    d = stats.n_features
    r = _uncentred(stats) if fit_intercept else _triangular(_uncentred(stats)[:, 1:])  # R of [1, X, Y] or [X, Y]
    q = d + fit_intercept
    left, singular, right = np.linalg.svd(r[:q, :q])
    left, singular, right = left[:, :rank], singular[:rank], right[:rank]
    estimates = right.T @ ((left.T @ r[:q, q:]) / singular[:, None])  # (q, k)
    return estimates.T, np.square(right.T / singular).sum(1)
