"""Preconditioning, `--model.precondition qr`: whether it applies to a fit, and the matrix that whitens the design.

The diagonal preconditioner is standardization (see standardize.py). "qr" goes further for a linear layer: it
feeds the layer the standardized design times M = C^(-1/2), C its correlation matrix, which the R factor of the
statistics pass already holds; the loss's Hessian in the layer's weights is then the identity, and gradient
descent converges at one rate in every direction, whatever the table's condition number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

WHITEN_MAX_ERROR = 3.0
"""Largest relative error, as `whitening` bounds it, that rounding the rows to the training precision may put in a
whitened direction; finer directions are left out of `precondition: qr`.

The bound is a worst case (rounding errors do not all line up with the weakest direction). Measured in float32
on synthetic tables of 5 features and 160 training rows, every direction kept, by the correlation matrix's
condition number (the bound): 1.2e12 (1.6) reaches a relative gap of 3e-4 in 2 epochs, 3.7e12 (2.8) 1e-3 in 2,
1.2e13 (5) stalls at 2e-3, 3.7e13 (9) diverges. On NIST's Filip (1.2e19) 3 keeps 8 of the 10 directions and
ends at a relative gap of 0.41, near the 0.37 of the exact answer of its float32-rounded rows; 2 keeps 7 (1.9).
"""


def why_not_qr(moments, is_linear: bool, has_bias: bool, penalized: bool) -> str | None:
    """Why the statistics' R cannot precondition this fit, or None when it can.

    Args:
        moments: The DataModule's `train_statistics`, or None when it computes none.
        is_linear: Whether the network is one linear layer.
        has_bias: Whether that layer has an intercept.
        penalized: Whether an L1 or L2 penalty or a weight decay applies.
    """
    if not is_linear:
        return "the network is not one linear layer, and whitening the inputs makes its loss no simpler"
    if moments is None:
        return "this DataModule computes no train_statistics"
    if moments.method == "moments":
        return f"{moments.width} columns of [1, X, Y] are too wide for the statistics to keep R"
    if not has_bias:
        return "whitening centres the inputs, which a model without an intercept (bias: false) cannot undo"
    if penalized:
        return "a penalty or weight decay would act on the whitened weights, not on W"
    return None


@dataclass(frozen=True)
class Whitening:
    """The matrix M that whitens a standardized design, and what it keeps of it.

    Attributes:
        matrix: M (d, d), float64.
        rank: The directions M keeps: those the statistics resolve and the rows' precision does too.
        exact_rank: The directions the statistics resolve (not constant or duplicated columns).
        condition_before: The condition number of the loss's Hessian, that whitening takes to 1.
        precision: The training rows' dtype, as in "float32".
    """

    matrix: torch.Tensor
    rank: int
    exact_rank: int
    condition_before: float
    precision: str

    def note(self) -> str | None:
        """The line saying which directions are left out as finer than the rows resolve; None when none is."""
        if self.rank == self.exact_rank:
            return None
        return (
            f"precondition qr whitens {self.rank} of the {self.exact_rank} directions of the standardized design: the"
            f" others (condition number {self.condition_before:.3g} in all) are finer than {self.precision} rows"
            " resolve, so training leaves them out and stops short of the exact answer, which the end-of-fit summary"
            " gives"
        )


def whitening(moments, dtype: torch.dtype) -> Whitening:
    """The matrix M that whitens the standardized design of `moments`, for rows of `dtype`.

    With Z the standardized centred design (N, d), the correlation matrix is C = Z'Z / N = P'P for the triangle
    P = R_x / (s sqrt(N)) that the statistics already hold (rows and columns 1 : 1 + d of R; their first row, the
    intercept, decouples since Z is centred). With P's SVD U S V', the network is fed z M, M = V S^-1 V' = C^(-1/2),
    whose columns have Z_w'Z_w / N = I: the loss in the layer's weights has the Hessian (2 / k) I. Directions with
    S below d * eps * S_max (constant or duplicated columns) get 0: the minimum-norm answer, which
    `LeastSquares.estimable` maps onto `solve`'s (the aliased columns' weights moved onto those they alias).

    The training rows are rounded to `dtype`: a relative error eps in a column whose mean is m and std s moves z by
    eps (1 + |m| / s), and z M by S_max / S_i times that in direction i. The directions where that exceeds
    `WHITEN_MAX_ERROR` are finer than the rows resolve: they are left out too (a truncated SVD, regularized at the
    rows' precision), and `Whitening.note` says so.
    """
    d = moments.n_features
    triangle = moments.factor()[1 : 1 + d, 1 : 1 + d] / moments.x_std / math.sqrt(moments.n)  # (d, d) P
    _, singular, right = np.linalg.svd(triangle)  # P = U diag(S) V', right = V'
    exact = singular > singular[0] * d * np.finfo(np.float64).eps  # else a constant or duplicated column
    rounding = torch.finfo(dtype).eps * float(np.max(1 + np.abs(moments.x_mean) / moments.x_std))
    keep = exact & (singular * WHITEN_MAX_ERROR >= singular[0] * rounding)
    inverse = np.divide(1.0, singular, out=np.zeros_like(singular), where=keep)
    return Whitening(
        matrix=torch.from_numpy((right.T * inverse) @ right),  # (d, d) V S^-1 V'
        rank=int(keep.sum()),
        exact_rank=int(exact.sum()),
        condition_before=float(singular[0] / singular[exact][-1]) ** 2,  # the Hessian's: P's squared
        precision=str(dtype).removeprefix("torch."),
    )


def whitening_for(moments, datamodule) -> tuple[Whitening, str | None]:
    """The whitening for the rows `datamodule` holds (float32 unless its `dtype` says), and the line to say.

    Where float32 rows leave directions out that float64 rows resolve, a DataModule that can hold its rows in
    float64 (`hold_float64`) is asked to, and the whitening is float64's: the model then trains in float64
    (`Whitening.precision`). Where it cannot, the line says why.
    """
    rows = getattr(datamodule, "dtype", torch.float32)
    found = whitening(moments, rows)
    line = found.note()
    if found.rank < found.exact_rank and rows != torch.float64 and hasattr(datamodule, "hold_float64"):
        finer = whitening(moments, torch.float64)
        why_not = datamodule.hold_float64() if finer.rank > found.rank else None  # else: finer than float64 too
        if finer.rank > found.rank and why_not is None:
            held = (
                f"precondition qr: {found.precision} rows resolve {found.rank} of the {found.exact_rank} directions"
                f" of this table (condition number {found.condition_before:.3g}), float64 rows {finer.rank}:"
                " its rows are held and trained in float64"
            )
            return finer, "; ".join(filter(None, (held, finer.note())))
        if why_not is not None:
            line += f"; float64 rows would resolve {finer.rank}, but {why_not}"
    return found, line
