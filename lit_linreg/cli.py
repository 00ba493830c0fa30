"""The command line: `python -m lit_linreg {fit,validate,test,predict} --config configs/X.yaml`.

A LightningCLI subclass adds the project's callbacks as config groups (`checkpoint`, `reference`,
`coefficients`, `figure`), links the data's sizes into the model, resolves `--ckpt_path last`,
and writes checkpoints atomically. `main` turns every mistake a user can make into one line on
stderr and a non-zero exit; set LIT_LINREG_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_linreg.callbacks import CoefficientLogger, FitFigure, LeastSquaresReference, PredictionWriter
from lit_linreg.checkpoint import AtomicCheckpointIO, LastCheckpoint, check_compatible, find_last, load_checkpoint
from lit_linreg.errors import DivergenceError, find_user_error
from lit_linreg.model import LinearRegression


class LinearRegressionCLI(LightningCLI):
    """LightningCLI for `LinearRegression` with any DataModule that exposes `in_features` / `out_features`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.save_last": False,  # LastCheckpoint, a default callback, writes last.ckpt every epoch
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LeastSquaresReference, "reference")
        parser.add_lightning_class_args(CoefficientLogger, "coefficients")
        parser.add_lightning_class_args(FitFigure, "figure")
        # The data knows its sizes once built: the model gets them from there, never from the user.
        parser.link_arguments("data.in_features", "model.in_features", apply_on="instantiate")
        parser.link_arguments("data.out_features", "model.out_features", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        self._checkpoint = None
        if config is None or not config.get("ckpt_path"):
            return
        # Lightning's own "last" looks only in this run's version folder, which is new: find the newest anywhere.
        if config.ckpt_path == "last":
            config.ckpt_path = str(find_last(config.trainer.default_root_dir or "."))
            print(f"resuming from {config.ckpt_path}")
        self._checkpoint = load_checkpoint(config.ckpt_path)  # safe load, one-line errors

    def _parse_ckpt_path(self) -> None:
        """Keep the model's config as given: with `--ckpt_path` the config wins over the checkpoint.

        LightningCLI would overwrite the model's config with the checkpoint's hyperparameters, silently
        dropping the user's --model.* flags. Instead the checkpoint must fit the configured model (checked in
        `after_instantiate_classes`), and `LinearRegression.on_load_checkpoint` hands the configured lr,
        momentum and weight decay to the restored optimizer.
        """

    def after_instantiate_classes(self) -> None:
        if self._checkpoint is not None:
            hp = self.model.hparams
            path = self._get(self.config, "ckpt_path")
            check_compatible(self._checkpoint, path, hp.in_features, hp.out_features, hp.bias)
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # unless the user chose another
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()


def cli_main(args: list[str] | None = None) -> LinearRegressionCLI:
    """Build and run the CLI; `args` replaces `sys.argv[1:]` (tests pass a list)."""
    # Lightning 2.6 calls an API that torch 2.13 deprecates, once per run: noise a user can do nothing about.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    return LinearRegressionCLI(
        LinearRegression,
        LightningDataModule,
        subclass_mode_data=True,
        trainer_defaults={"default_root_dir": "runs", "callbacks": [LastCheckpoint(), PredictionWriter()]},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        args=args,
    )


def main(args: list[str] | None = None) -> int:
    """Console entry point: run the CLI, reporting user errors as one line and a non-zero exit code.

    Exit 2 for a mistake in a flag, config, data file or checkpoint; 1 when training diverged.
    Any other exception is a bug and keeps its traceback.
    """
    try:
        cli_main(args)
    except (ArgumentError, MisconfigurationException) as err:  # a bad flag or config; Trainer options that clash
        return _fail(err, err, code=2)
    except UnicodeDecodeError as err:  # CSV files report their own; this is jsonargparse reading a --config file
        reason = f"a --config file is not UTF-8 text ({err.reason} at byte {err.start}): give a YAML file"
        return _fail(err, reason, code=2)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None:
            raise
        return _fail(err, user_error, code=1 if isinstance(user_error, DivergenceError) else 2)
    return 0


def _fail(err: Exception, reason: Exception | str, code: int) -> int:
    """Print `reason` as one line on stderr and return `code`; re-raise `err` when LIT_LINREG_DEBUG is set."""
    if os.environ.get("LIT_LINREG_DEBUG"):
        raise err
    lines = [line.strip() for line in str(reason).strip().splitlines() if line.strip()]
    # jsonargparse explains a bad value of a Union-typed option (data, trainer.max_epochs, ...) by listing each
    # type it tried and dumping the value it was given: noise next to the one error that matters.
    noise = ("Does not validate against any", "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'None")
    dumped = [line for line in lines if line.startswith("Given value:") and any(c in line for c in "({[")]
    lines = [line.removeprefix("- ") for line in lines if not line.startswith(noise) and line not in dumped]
    print(f"lit-linreg: error: {' '.join(lines)}", file=sys.stderr)
    return code
