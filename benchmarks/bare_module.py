"""The bare LightningModule and Trainer every floor here is measured with: nn.Linear, MSE and SGD, nothing else."""

import lightning as L
import torch
from torch import nn


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


def bare_trainer(epochs: int, *callbacks: L.Callback, accelerator: str = "auto") -> L.Trainer:
    """A Trainer with nothing a run does not need: no logger, checkpoints, validation, progress bar or summary."""
    return L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
