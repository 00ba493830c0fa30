"""Lightning's floor for lit_linreg's epoch: a bare LightningModule fed the same in-memory batches.

nn.Linear, MSE and SGD (lr 0.1), trained by a Trainer with no logger, no checkpoints, no validation and no
progress bar, on batches index-gathered from the whole in-memory training tensors of `SyntheticDataModule`
(lit_linreg's own `TensorLoader`, reshuffled each epoch). What lit_linreg's epoch costs beyond this is its
own per-step and per-epoch work. Prints `EPOCH_SECONDS [...]` through `EpochTimer`.
"""

import argparse

import lightning as L
import torch
from epoch_timer import EpochTimer
from torch import nn

from lit_linreg import SyntheticDataModule
from lit_linreg.data.loader import TensorLoader


class Linear(L.LightningModule):
    """nn.Linear trained on the mean squared error by SGD."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.linear(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def bare_trainer(epochs: int, *callbacks: L.Callback) -> L.Trainer:
    """A Trainer with nothing a run does not need: no logger, checkpoints, validation, progress bar or summary."""
    return L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=2_097_152)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    L.seed_everything(0)
    x, y = SyntheticDataModule(n_samples=args.n_samples, n_features=args.n_features).load("fit")["train"]
    loader = TensorLoader(x, y, batch_size=args.batch_size, shuffle=True)
    bare_trainer(args.epochs, EpochTimer()).fit(Linear(args.n_features), loader)
