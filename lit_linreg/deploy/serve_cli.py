"""`python -m lit_linreg serve --config C --ckpt_path CKPT`: resolve the model with the CLI, then serve it lean.

The command runs in two steps, in one process. First the whole CLI, as `predict` runs it (trained.py): the config
and its flags parsed and checked, `--ckpt_path last` or `best` resolved, the checkpoint loaded safely and checked
against the model, and the server's own flags checked; every mistake is one line and exit code 2. The trained
model is then reduced to a `Servable` (servable.py): a linear model's coefficients in original units and its
encoder's rules, as numpy arrays. Second, the process replaces itself (`os.execv`, same process id, so a signal
sent to it still reaches the server) with `python -m lit_linreg.deploy SERVABLE`, the server of serve.py, which
imports LitServe and numpy only: Lightning, torch, the DataModule and the model leave with the first step.

`python -m lit_linreg serve` usually runs the two steps side by side instead (launch.py): the first step alone, in
a child process (resolve.py, which sets `HAND_OVER`), while the server starts.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser
from torch import nn

from lit_linreg.deploy.launch import OPTIONS, check_options
from lit_linreg.deploy.servable import LinearPredictor, ModulePredictor, Servable
from lit_linreg.deploy.trained import TrainedModelCLI, dtype_of, prediction_names, run_command
from lit_linreg.errors import ConfigError
from lit_linreg.model.module import LinearRegression

HAND_OVER: Path | None = None  # where `run` writes the servable, for a server already started (resolve.py)


class ServeCLI(TrainedModelCLI):
    """`serve`: the trained model, reduced to a `Servable` with the server's settings (`self.servable`)."""

    command = "serve"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        for name, (kind, default, text) in OPTIONS.items():  # the server's own; launch.py reads them too
            parser.add_argument(f"--{name}", type=kind, default=default, help=text)

    def use(self, model: nn.Module, datamodule: Any) -> None:
        options = {name: self.option(name) for name in OPTIONS}
        check_options(options, probe_port=HAND_OVER is None)  # else the server holds the port already
        self.servable = Servable(
            predictor=predictor_of(model),
            schema=model.schema,
            names=prediction_names(model.schema),
            unknown_category=getattr(datamodule, "unknown_category", "error"),
            checkpoint=self.config[self.subcommand]["ckpt_path"],  # resolved: `last` or `best` named a file
            options=options,
        )


def predictor_of(model: nn.Module) -> LinearPredictor | ModulePredictor:
    """A linear model as its coefficients and encoder's rules (numpy); any other model whole, pickled."""
    dtype = str(dtype_of(model)).removeprefix("torch.")
    own_forward = type(model).forward is LinearRegression.forward  # else W and b may not be what it computes
    coefficients = model.coefficients() if own_forward and hasattr(model, "coefficients") else None
    if coefficients is None:
        return ModulePredictor(pickle.dumps(model.cpu().eval()), dtype)
    schema = model.schema
    encoder = model.design.encoder  # the per-feature fills of `missing: mean`, set from the training rows
    fill = encoder.fill.double().cpu().numpy() if encoder is not None and schema["missing"] == "mean" else None
    weight, bias = (t.cpu().numpy() for t in coefficients)  # (targets, design columns), (targets,): float64
    levels = [len(schema["categories"].get(name, ())) for name in schema["features"]]
    return LinearPredictor(weight=weight, bias=bias, levels=levels, fill=fill, dtype=dtype)


def servable(args: list[str]) -> Servable:
    """The `Servable` of `serve ARGS` (`--config C --ckpt_path CKPT ...`), every argument checked."""
    return run_command(ServeCLI, args).servable


def run(args: list[str]) -> None:
    """`python -m lit_linreg serve ARGS`: check ARGS and reduce the model, then become the lean server (serve.py)."""
    if importlib.util.find_spec("litserve") is None:  # the optional `serve` extra
        raise ConfigError("serve needs LitServe: pip install 'lit_linreg[serve]' (make install installs it)")
    reduced = servable(args)
    if HAND_OVER is not None:
        reduced.save(HAND_OVER)
        return
    handle, name = tempfile.mkstemp(prefix="lit-linreg-serve-", suffix=".pkl")  # readable by this user only
    os.close(handle)
    path = Path(name)
    reduced.save(path)  # the server reads it, then removes it
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, "-m", "lit_linreg.deploy", str(path)])
    except OSError:
        path.unlink(missing_ok=True)
        raise
