"""What a server's inference worker needs of a trained model, and nothing more: a predictor and the names.

`serve` resolves the config and the checkpoint with the whole CLI (Lightning, the DataModule, the checks), then
hands the worker a `Servable`: a small picklable object. A linear model becomes a `LinearPredictor`, its
coefficients in original units and its encoder's rules as numpy arrays, so the worker imports numpy, not torch or
Lightning. Any other model (a non-linear network, a subclass with its own `forward`) travels whole, as a
`ModulePredictor`, and its worker imports what the model's class needs.

Imports numpy only: this module is what the server's processes load.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LinearPredictor:
    """A linear model's predictions from raw rows: the design matrix, times W, plus b, in float64.

    Computed in float64 from coefficients in original units, then rounded to the model's dtype: the model's own
    float32 layers round on the way, so the two agree to float32's precision, not to the last bit.

    Args:
        weight: W (targets, design columns), original units.
        bias: b (targets,).
        levels: Per feature, its categories' count (0 for a numeric feature): a categorical code c becomes one-hot
            columns for the levels 1..n-1 (code 0, the reference level, and -1, unknown, give all zeros).
        fill: Per feature, the value a missing (NaN) numeric cell takes, or None where nothing is filled.
        dtype: The model's dtype, "float32" or "float64": the rows' and the predictions'.
    """

    weight: np.ndarray
    bias: np.ndarray
    levels: list[int]
    fill: np.ndarray | None
    dtype: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Raw rows (N, features), categorical columns as codes -> predictions (N, targets) in the model's dtype."""
        x = x.astype(np.float64)
        if self.fill is not None:
            x = np.where(np.isnan(x), self.fill, x)
        columns = [
            x[:, j : j + 1] if n == 0 else (x[:, j : j + 1] == np.arange(1, n)).astype(np.float64)  # (N, n - 1)
            for j, n in enumerate(self.levels)
        ]
        design = np.concatenate(columns, axis=1)  # (N, design columns)
        with np.errstate(over="ignore"):  # beyond float32 becomes inf: the server refuses it, naming the row
            return (design @ self.weight.T + self.bias).astype(self.dtype)

    def ready(self) -> LinearPredictor:
        return self


@dataclass
class ModulePredictor:
    """Any other model: the trained module itself, pickled; only its worker unpickles it, importing torch and the
    module's class (Lightning's, for a LightningModule), so the server's other processes hold neither.

    Args:
        pickled: The model, in eval mode on the CPU, as `pickle.dumps` wrote it.
        dtype: Its dtype, "float32" or "float64".
    """

    pickled: bytes
    dtype: str

    def ready(self) -> ModulePredictor:
        self.module = pickle.loads(self.pickled)
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch  # already imported by unpickling the module

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()


@dataclass
class Servable:
    """A trained model as a server's worker uses it, with the server's settings.

    Args:
        predictor: A `LinearPredictor` or a `ModulePredictor`.
        schema: The model's schema (features, targets, categories, missing; see tables/encoding.py).
        names: The predictions' names, `predicted_<target>` in the targets' order.
        unknown_category: "error" or "zeros", as `--data.unknown_category`.
        checkpoint: The checkpoint file served, for the first line the server prints.
        options: The server's settings: host, port, workers, max_batch_size, batch_timeout, max_rows.
    """

    predictor: LinearPredictor | ModulePredictor
    schema: dict
    names: list[str]
    unknown_category: str
    checkpoint: str
    options: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def load(path: Path) -> Servable:
        """The Servable `save` wrote; the file is removed once read (it was written for this one server)."""
        try:
            return pickle.loads(path.read_bytes())
        finally:
            path.unlink(missing_ok=True)
