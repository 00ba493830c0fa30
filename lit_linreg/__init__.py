"""lit_linreg: linear regression by gradient descent, the PyTorch Lightning way."""

from lit_linreg.datamodules import (
    CropYieldDataModule,
    InMemoryDataModule,
    SyntheticDataModule,
    TableDataModule,
    ToyDataModule,
)
from lit_linreg.model import LinearRegression
from lit_linreg.nets import MLP

__all__ = [
    "CropYieldDataModule",
    "InMemoryDataModule",
    "LinearRegression",
    "MLP",
    "SyntheticDataModule",
    "TableDataModule",
    "ToyDataModule",
]
