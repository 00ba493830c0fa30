"""lit_linreg: linear regression by gradient descent, the PyTorch Lightning way."""

from lit_linreg.datamodules import (
    CropYieldDataModule,
    InMemoryDataModule,
    SyntheticDataModule,
    TableDataModule,
    ToyDataModule,
)
from lit_linreg.model import LinearRegression

__all__ = [
    "CropYieldDataModule",
    "InMemoryDataModule",
    "LinearRegression",
    "SyntheticDataModule",
    "TableDataModule",
    "ToyDataModule",
]
