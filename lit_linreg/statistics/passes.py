"""A way back to the training rows, for statistics too wide to keep p x p matrices.

Above `EXACT_MAX_COLUMNS` the one pass keeps O(p) moments only; the least-squares answer (conjugate gradient, in
`solve`) and the Hessian's eigenvalues (Lanczos, in `diagnostics`) then come from products with the centred
rows X_c, one pass over them each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

_PASS_VALUES = 1 << 22  # values of [X, Y] per sub-block of a row pass: 32 MB of float64 temporaries


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
