"""Callbacks: the exact least-squares reference, coefficients as they move, the fit figure, predictions.

None of them adds work to a training step: the reference makes one extra pass over the training
data at the start of fit, the rest act once per epoch or at the end of a stage.

One callback a file (`reference`, `coefficients`, `figure`, `predictions`); every name is re-exported here, so
a config names a class as `lit_linreg.callbacks.LeastSquaresReference`, as saved config.yaml files do.
"""

from lit_linreg.callbacks.coefficients import (
    CoefficientLogger,
    coefficient_names,
    coefficient_records,
    format_summary,
    write_coefficients,
)
from lit_linreg.callbacks.figure import FitFigure, draw_fit
from lit_linreg.callbacks.gap import shortfall
from lit_linreg.callbacks.predictions import PredictionWriter
from lit_linreg.callbacks.reference import LeastSquaresReference, format_table, statistics_from_loader
from lit_linreg.callbacks.scalars import log_epoch_scalars

__all__ = [
    "CoefficientLogger",
    "FitFigure",
    "LeastSquaresReference",
    "PredictionWriter",
    "coefficient_names",
    "coefficient_records",
    "draw_fit",
    "format_summary",
    "format_table",
    "log_epoch_scalars",
    "shortfall",
    "statistics_from_loader",
    "write_coefficients",
]
