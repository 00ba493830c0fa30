"""lit_linreg: linear regression by gradient descent, the PyTorch Lightning way.

The public names are imported on first use (PEP 562), so that `python -m lit_linreg.convert`, a data-loading
worker or a test that needs only `lit_linreg.statistics` does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "CropYieldDataModule": "lit_linreg.datamodules",
    "InMemoryDataModule": "lit_linreg.datamodules",
    "SyntheticDataModule": "lit_linreg.datamodules",
    "TableDataModule": "lit_linreg.datamodules",
    "ToyDataModule": "lit_linreg.datamodules",
    "LinearRegression": "lit_linreg.model",
    "MLP": "lit_linreg.nets",
}

__all__ = [
    "CropYieldDataModule",
    "InMemoryDataModule",
    "LinearRegression",
    "MLP",
    "SyntheticDataModule",
    "TableDataModule",
    "ToyDataModule",
]

if TYPE_CHECKING:
    from lit_linreg.datamodules import (
        CropYieldDataModule,
        InMemoryDataModule,
        SyntheticDataModule,
        TableDataModule,
        ToyDataModule,
    )
    from lit_linreg.model import LinearRegression
    from lit_linreg.nets import MLP


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_linreg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # import once: later lookups find it without this hook
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
