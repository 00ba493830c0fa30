"""A trained model, rebuilt the way `predict` builds it: the config's classes, then the checkpoint's weights.

`serve` and `export` take the same `--config` and `--ckpt_path` as `predict` (and any `--model.*` or `--data.*`
flag), so whatever model class and network the config names is what they use. They run through the CLI's own
parser and instantiation (`TrainedModelCLI`, a LinearRegressionCLI): `--ckpt_path last` and `best` resolve
within the experiment, the checkpoint loads with `weights_only=True` and must fit the configured model, and
every mistake is the same one line as the CLI's. Only the last step differs: instead of `Trainer.predict`, the
subclass's `use(model, datamodule)` gets the model with its weights loaded, in eval mode.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch

from lit_linreg.cli.main import LinearRegressionCLI, cli_main
from lit_linreg.errors import ConfigError
from lit_linreg.tables.columns import prediction_columns


class TrainedModelCLI(LinearRegressionCLI):
    """The `predict` subcommand's parsing and checks, handing the trained model to `use` instead of a Trainer.

    Subclasses add their own flags in `add_arguments_to_parser` (calling this one's) and read them with
    `self.option(name)`. LightningCLI runs a subcommand by calling a CLI method of that name when there is
    one (`predict` here), else the Trainer's.
    """

    command = "serve or export"  # the name errors give the command; each subclass sets its own
    used = False  # set once `use` has run: the check that LightningCLI called `predict` below

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """LinearRegressionCLI's, with `--help` and parse errors naming this command rather than `predict`."""
        predict = getattr(self, "_subcommand_parsers", {}).get("predict")  # LightningCLI's; the usage is cosmetic
        if predict is not None:
            predict.prog = predict.prog.replace(" predict", f" {self.command}")
        super().parse_arguments(parser, args)

    def _resolve_checkpoint(self, config: Any) -> dict | None:
        """LinearRegressionCLI's, with the command named as the user typed it when `--ckpt_path` is missing."""
        if config.get("ckpt_path") is None:
            raise ConfigError(f"{self.command} needs --ckpt_path: a checkpoint file, `last` or `best`")
        return super()._resolve_checkpoint(config)

    def _claim_run_dir(self) -> None:
        """Claim no run directory: nothing is trained, logged or written there."""

    def predict(self, model: L.LightningModule, datamodule: L.LightningDataModule | None = None, **_: Any) -> None:
        """Load the checkpoint's weights into `model` (as `Trainer.predict` would) and hand it to `use`."""
        checkpoint = self._checkpoint  # loaded safely and checked against the model by LinearRegressionCLI
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
        self.use(model.eval(), datamodule)
        self.used = True

    def use(self, model: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
        """Do this command's work with the trained model (eval mode, on the CPU)."""
        raise NotImplementedError

    def option(self, name: str) -> Any:
        """The value of a flag this subclass added, as parsed."""
        return self.config[self.subcommand][name]


def run_command(cli_class: type[TrainedModelCLI], args: list[str]) -> TrainedModelCLI:
    """Parse `args` (`--config C --ckpt_path CKPT ...`) as `predict` does, and run `cli_class.use` on the model."""
    # `args` stand for the command line, which names `serve` or `export`, not `predict`: Lightning's warning that
    # both were given is about a mistake not made here.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    cli = cli_main(["predict", *args], cli_class=cli_class)
    if not cli.used:  # Lightning ran Trainer.predict: its subcommands work otherwise now
        raise RuntimeError("LightningCLI no longer runs a CLI's own `predict` method: update trained.py")
    return cli


def dtype_of(model: torch.nn.Module) -> torch.dtype:
    """The dtype a trained model computes in: float32, or float64 for one that trained in float64 (a table beyond
    float32's precision, see `LinearRegression._precondition`)."""
    return next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)


def prediction_names(schema: dict) -> list[str]:
    """`predicted_<target>` for each target, named as predictions.csv names them for rows of the model's features."""
    return prediction_columns(schema["targets"], schema["features"])
