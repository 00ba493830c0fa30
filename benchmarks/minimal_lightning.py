"""The smallest Lightning script that trains configs/toy.yaml's model: the start-up benchmark's baseline.

y = 2x on x = [1, 2, 3, 4], f(x) = w * x from w = 0, SGD lr 0.01, 100 full-batch epochs, a default
Trainer (logger, checkpoints, progress bar). Run it from a scratch directory: it writes lightning_logs/.
`--gc-as-lit-linreg`: import with the garbage collector off, then freeze what the imports made, as
`python -m lit_linreg` does (lit_linreg/__main__.py).
"""

import gc
import sys

FROZEN = "--gc-as-lit-linreg" in sys.argv
if FROZEN:
    gc.disable()

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402


class Linear(L.LightningModule):
    """f(x) = w * x from w = 0, trained on the mean squared error by SGD."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.linear.weight)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.linear(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":
    if FROZEN:
        gc.freeze()
        gc.enable()
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # (4, 1)
    model = Linear()
    L.Trainer(max_epochs=100, log_every_n_steps=1).fit(model, DataLoader(TensorDataset(x, 2 * x), batch_size=4))
    print(f"f(5) = {model.linear(torch.tensor([5.0])).item():.4f}")
