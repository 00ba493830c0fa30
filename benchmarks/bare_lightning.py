"""Lightning's floor for lit_linreg's epoch: a bare LightningModule fed the same in-memory batches.

nn.Linear, MSE and SGD (lr 0.1), trained by a Trainer with no logger, no checkpoints, no validation and no
progress bar, on batches index-gathered from the whole in-memory training tensors of `SyntheticDataModule`
(lit_linreg's own `TensorLoader`, reshuffled each epoch). What lit_linreg's epoch costs beyond this is its
own per-step and per-epoch work. Prints `EPOCH_SECONDS [...]` through `EpochTimer`.
"""

import argparse

import lightning as L
from bare_module import Linear, bare_trainer
from epoch_timer import EpochTimer

from lit_linreg import SyntheticDataModule
from lit_linreg.data.loader import TensorLoader

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=2_097_152)
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--accelerator", default="auto", help="as --trainer.accelerator; the rows move there once")
    args = parser.parse_args()

    L.seed_everything(0)
    x, y = SyntheticDataModule(n_samples=args.n_samples, n_features=args.n_features).load("fit")["train"]
    trainer = bare_trainer(args.epochs, EpochTimer(), accelerator=args.accelerator)
    device = trainer.strategy.root_device  # the rows held where the model trains, as lit_linreg's DataModules hold them
    loader = TensorLoader(x.to(device), y.to(device), batch_size=args.batch_size, shuffle=True)
    trainer.fit(Linear(args.n_features), loader)
