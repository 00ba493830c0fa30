"""The naive Lightning recipe lit_linreg is compared with: TensorDataset + DataLoader(shuffle=True).

A LightningModule around nn.Linear (MSE, SGD lr 0.1) and a default Trainer, fed by a DataLoader over a
TensorDataset of the training split of `SyntheticDataModule`: every row goes through `__getitem__`
and every batch through `default_collate`. Run it from a scratch directory (it writes lightning_logs/).
Prints `EPOCH_SECONDS [...]` through `EpochTimer`.
"""

import argparse

import lightning as L
import torch
from epoch_timer import EpochTimer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_linreg import SyntheticDataModule


class Linear(L.LightningModule):
    """nn.Linear trained on the mean squared error by SGD."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.linear(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=131_072)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    L.seed_everything(0)
    x, y = SyntheticDataModule(n_samples=args.n_samples, n_features=args.n_features).load("fit")["train"]
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True)
    trainer = L.Trainer(max_epochs=args.epochs, callbacks=[EpochTimer()])
    trainer.fit(Linear(args.n_features), loader)
