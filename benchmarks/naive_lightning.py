"""The naive Lightning recipe lit_linreg is compared with: TensorDataset + DataLoader(shuffle=True).

A LightningModule around nn.Linear (MSE, SGD lr 0.1) and a default Trainer, fed by a DataLoader over a
TensorDataset of the training split of `SyntheticDataModule`: every row goes through `__getitem__`
and every batch through `default_collate`. Run it from a scratch directory (it writes lightning_logs/).
Prints `EPOCH_SECONDS [...]` through `EpochTimer`.
"""

import argparse

import bare_module
import lightning as L
from epoch_timer import EpochTimer
from torch.utils.data import DataLoader, TensorDataset

from lit_linreg import SyntheticDataModule


class Linear(bare_module.Linear):
    """The bare module, logging its loss every step as a recipe does."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)
        return loss


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
