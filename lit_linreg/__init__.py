"""lit_linreg: linear regression by gradient descent, the PyTorch Lightning way."""

from lit_linreg.data import CropYieldDataModule, CSVDataModule, InMemoryDataModule, SyntheticDataModule, ToyDataModule
from lit_linreg.model import LinearRegression

__all__ = [
    "CSVDataModule",
    "CropYieldDataModule",
    "InMemoryDataModule",
    "LinearRegression",
    "SyntheticDataModule",
    "ToyDataModule",
]
