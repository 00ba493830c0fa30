"""From a table's columns to the model's design matrix: one-hot categories and filled-in missing values.

A table's schema is a dict of primitives, so it travels in a checkpoint's hyperparameters and loads with
`weights_only=True`:

    {"features": ["weight", "origin"],         # the raw input columns, in the order the model takes them
     "targets": ["mpg"],
     "categories": {"origin": ["Europe", "Japan", "USA"]},   # sorted; the first is the reference level
     "missing": "drop"}                         # or "error", or "mean": fill features with training means

A categorical column reaches the model as integer codes (its position in the category list, -1 for a value
training never saw) and is one-hot encoded inside the model with R's treatment contrasts: one column per
category but the first, `origin=Japan`, `origin=USA`, so the intercept is the reference level's and the
design has full rank. A code of -1 gives all zeros: the reference level.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def default_schema(features: list[str], targets: list[str]) -> dict:
    """The schema of an all-numeric table with nothing to fill."""
    return {"features": list(features), "targets": list(targets), "categories": {}, "missing": "drop"}


def design_names(schema: dict) -> list[str]:
    """The model's input columns after encoding: numeric features as named, `col=level` per non-reference level."""
    names = []
    for name in schema["features"]:
        levels = schema["categories"].get(name)
        names += [name] if levels is None else [f"{name}={level}" for level in levels[1:]]
    return names


def needs_encoder(schema: dict) -> bool:
    return bool(schema["categories"]) or schema["missing"] == "mean"


def category_codes(levels: list[str], values: np.ndarray) -> np.ndarray:
    """The codes of a categorical column's cells, (N,) float64: each level's position in `levels`, -1 for a
    level not among them, and 0 for a missing cell (None), whose row is dropped or refused before it is used."""
    index = {level: code for code, level in enumerate(levels)}
    return np.array([index.get(v, -1) if v is not None else 0 for v in values], dtype=np.float64)


class TableEncoder(nn.Module):
    """Maps raw inputs (N, features) to the design matrix (N, len(design_names(schema))).

    Numeric columns pass through, with a missing value (NaN) replaced by the column's `fill` when the schema
    says `missing: mean`; categorical columns, given as codes, become one-hot columns. `fill` is a buffer set
    from the training rows, so a checkpoint predicts as training did.
    """

    def __init__(self, schema: dict) -> None:
        super().__init__()
        self.fill_missing = schema["missing"] == "mean"
        self.register_buffer("fill", torch.zeros(len(schema["features"])))
        # One (column, n_levels) per input; n_levels 0 for a numeric column.
        self.levels = [len(schema["categories"].get(name, ())) for name in schema["features"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fill_missing:
            x = torch.where(torch.isnan(x), self.fill.to(x.dtype), x)
        pieces = []
        for j, n_levels in enumerate(self.levels):
            column = x[:, j : j + 1]  # (N, 1)
            if n_levels == 0:
                pieces.append(column)
            else:
                levels = torch.arange(1, n_levels, device=x.device, dtype=x.dtype)  # (L - 1,)
                pieces.append((column == levels).to(x.dtype))  # (N, L - 1); code 0 and -1 give zeros
        return torch.cat(pieces, dim=1)
