"""lit_linreg: linear regression by gradient descent, the PyTorch Lightning way.

The public names are imported on first use (PEP 562), so that `python -m lit_linreg.tables.convert`, a data-loading
worker or a test that needs only `lit_linreg.statistics` does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lit_linreg import _moved

_moved.install()  # the flat layout's module names, as older configs and runs name them

# public name -> the module that defines it
_EXPORTS = {
    "CropYieldDataModule": "lit_linreg.data.datamodules",
    "InMemoryDataModule": "lit_linreg.data.datamodules",
    "SyntheticDataModule": "lit_linreg.data.datamodules",
    "TableDataModule": "lit_linreg.data.table_datamodule",
    "ToyDataModule": "lit_linreg.data.datamodules",
    "LinearRegression": "lit_linreg.model.module",
    "MLP": "lit_linreg.model.nets",
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
    from lit_linreg.data.datamodules import (
        CropYieldDataModule,
        InMemoryDataModule,
        SyntheticDataModule,
        ToyDataModule,
    )
    from lit_linreg.data.table_datamodule import TableDataModule
    from lit_linreg.model.module import LinearRegression
    from lit_linreg.model.nets import MLP


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_linreg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # import once: later lookups find it without this hook
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
