"""The command line: `python -m lit_linreg {fit,validate,test,predict} --config configs/X.yaml`.

A LightningCLI subclass takes the model class (`--model`: LinearRegression or a subclass), adds the project's
callbacks as config groups (`checkpoint`, `reference`, `coefficients`, `figure`, `dashboard`), links the data's
sizes into the model, resolves `--ckpt_path last` and `best` within the experiment, gives each run a directory of
its own and writes every file there atomically. `main` turns every mistake a user can make into one line on stderr
and a non-zero exit; set LIT_LINREG_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import inspect
import logging
import os
import re
import signal
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import MethodType
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, Namespace, get_loader, set_loader, set_parsing_settings
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback, instantiate_class
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_linreg.callbacks import CoefficientLogger, FitFigure, LeastSquaresReference, PredictionWriter
from lit_linreg.checkpoint import (
    AtomicCheckpointIO,
    BestCheckpoint,
    LastCheckpoint,
    RunStamp,
    atomic_write,
    check_compatible,
    check_resumable,
    check_tensors,
    claim_run_dir,
    experiment,
    find_checkpoint,
    load_checkpoint,
)
from lit_linreg.constraints import check_config
from lit_linreg.dashboard import TensorBoardLayout
from lit_linreg.errors import ConfigError, DivergenceError, find_user_error
from lit_linreg.model import LinearRegression

# A config names classes by import path, and naming one runs its code. jsonargparse refuses these paths (shell,
# files, network: its default denylist) once a list is set; added here: modules that run code on import or take
# code as arguments. What a config may still name is listed in the README ("A config is code").
IMPORT_DENYLIST = [
    "lightning.pytorch.callbacks.LambdaCallback",
    "lightning.pytorch.callbacks.lambda_function",
    "pytorch_lightning.callbacks.LambdaCallback",
    "pytorch_lightning.callbacks.lambda_function",
    "builtins",
    *("this", "code", "codeop", "pdb", "runpy", "importlib", "ctypes", "pickle", "marshal", "shutil", "pty"),
    *("sys", "signal", "tempfile", "threading", "_thread"),
]
MAX_CONFIG_NODES = 100_000  # values in one YAML document, aliases counted each time they are used
MAX_CONFIG_DEPTH = 64  # lists and mappings within each other


class AtomicSaveConfig(SaveConfigCallback):
    """Writes the run's `config.yaml` with `atomic_write`: a full disk or a kill never leaves half a file.

    Replaces `SaveConfigCallback.setup`, which writes in place; each run owns its directory, so there is
    no earlier file to protect.
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a broadcast: every rank calls it
        if trainer.is_global_zero:
            text = self.parser.dump(self.config, skip_none=False)
            atomic_write(Path(log_dir) / self.config_filename, text.encode())
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


def give_data_the_schema(checkpoint: dict, config: Namespace) -> None:
    """Hand a trained model's columns to a DataModule that takes a `schema` (TableDataModule does).

    Every checkpoint keeps the model's schema (feature names, categories, missing-value rule) as a
    hyperparameter, so the DataModule reads what the model expects, and `predict` needs only the new file,
    even when the training file is gone.
    """
    schema = checkpoint.get("hyper_parameters", {}).get("schema")
    data = config.get("data")
    init_args = data.get("init_args") if isinstance(data, Namespace) else None
    if schema is not None and isinstance(init_args, Namespace) and "schema" in init_args:
        init_args.schema = schema


class LinearRegressionCLI(LightningCLI):
    """LightningCLI for `LinearRegression` with any DataModule that exposes `in_features` / `out_features`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.save_last": False,  # the `last` group (LastCheckpoint) writes last.ckpt every epoch
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "last")
        parser.add_lightning_class_args(LeastSquaresReference, "reference")
        parser.add_lightning_class_args(CoefficientLogger, "coefficients")
        parser.add_lightning_class_args(FitFigure, "figure")
        parser.add_lightning_class_args(TensorBoardLayout, "dashboard")
        # `--model` takes any subclass of LinearRegression (`--model my_pkg.HuberRegression`, or `class_path` in a
        # config); a config that gives only the init args, as every shipped one does, gets LinearRegression.
        parser.set_defaults({"model": {"class_path": "lit_linreg.LinearRegression"}})
        # The data knows its sizes once built: the model gets them from there, never from the user.
        parser.link_arguments("data.in_features", "model.init_args.in_features", apply_on="instantiate")
        parser.link_arguments("data.out_features", "model.init_args.out_features", apply_on="instantiate")
        parser.link_arguments("data.schema", "model.init_args.schema", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        _SECTIONS.update(key for name in self.subcommands() for key in self._parser(name).groups)
        super().parse_arguments(parser, args)
        config = self.config[self.config.subcommand]
        refuse_functions(config)
        check_seed(config.get("seed_everything"))
        check_config(config, {"trainer": self.trainer_class, **group_classes(self._parser(self.config.subcommand))})
        self._experiment = experiment(config.get("data"))
        self._checkpoint = self._resolve_checkpoint(config)
        if self._checkpoint is not None:
            give_data_the_schema(self._checkpoint, config)

    def _resolve_checkpoint(self, config: Namespace) -> dict | None:
        """Load `--ckpt_path` safely, resolving `last` and `best` within this experiment; refuse none but for fit.

        Lightning's own `last` and `best` look only in this run's version folder, which is new.
        """
        subcommand = self.config.subcommand
        if config.get("ckpt_path") == "":
            raise ConfigError("--ckpt_path is empty: give a checkpoint file, `last` or `best`")
        if not config.get("ckpt_path"):
            if subcommand != "fit":  # the model's untrained weights would give a silent wrong answer
                raise ConfigError(f"{subcommand} needs --ckpt_path: a checkpoint file, `last` or `best`")
            return None
        if config.ckpt_path in ("last", "best"):
            root = os.path.expanduser(config.trainer.default_root_dir or ".")
            config.ckpt_path = str(find_checkpoint(root, config.ckpt_path, self._experiment))
            if subcommand == "fit":
                print(f"resuming from {config.ckpt_path}")
        return load_checkpoint(config.ckpt_path)  # safe load, one-line errors

    def _parse_ckpt_path(self) -> None:
        """Keep the model's config as given: with `--ckpt_path` the config wins over the checkpoint.

        LightningCLI would overwrite the model's config with the checkpoint's hyperparameters, silently
        dropping the user's --model.* flags. Instead the checkpoint must fit the configured model (checked in
        `after_instantiate_classes`), and `RunStamp` hands the settings changed since to the restored optimizer.
        """

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with the values it refuses (`--trainer.accelerator bogus`) reported as a ConfigError."""
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, TypeError, MisconfigurationException) as err:
            raise ConfigError(f"trainer: {err}") from err

    def after_instantiate_classes(self) -> None:
        refuse_launches_that_hang(self.trainer)
        optimizer, settings = self._optimizer_settings()
        if self._checkpoint is not None:
            path = self._get(self.config, "ckpt_path")
            check_compatible(self._checkpoint, path, self.model)
            check_tensors(self._checkpoint, path, self.model)
            if self.subcommand == "fit":
                check_resumable(self._checkpoint, path, optimizer)
        self._schedule_the_default_optimizer()
        self.trainer.callbacks.append(RunStamp(self._experiment, optimizer, settings))
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # unless the user chose another
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self._claim_run_dir()  # last: a run refused above leaves no directory behind

    def _optimizer_settings(self) -> tuple[str, dict[str, Any]]:
        """The optimizer's class name and configured settings: `--optimizer`'s own, or the model's for its SGD."""
        optimizer = self._get(self.config, "optimizer")
        if optimizer:
            args = dict(optimizer.get("init_args") or {})
            primitives = (bool, int, float, str, list, tuple, type(None))
            return optimizer.class_path.rsplit(".", 1)[-1], {k: v for k, v in args.items() if isinstance(v, primitives)}
        hp = self.model.hparams
        return "SGD", {"lr": hp.lr, "momentum": hp.momentum, "weight_decay": hp.weight_decay}

    def _schedule_the_default_optimizer(self) -> None:
        """Make `--lr_scheduler` without `--optimizer` schedule the model's own SGD, as LightningCLI does not.

        LightningCLI adds a scheduler only together with an `--optimizer`, and would drop this one silently.
        """
        scheduler = self._get(self.config_init, "lr_scheduler")
        if not scheduler or self._get(self.config_init, "optimizer"):
            return
        optimizer = self.model.configure_optimizers()
        lr_scheduler = instantiate_class(optimizer, scheduler)
        fn = functools.partial(self.configure_optimizers, optimizer=optimizer, lr_scheduler=lr_scheduler)
        functools.update_wrapper(fn, self.configure_optimizers)  # as LightningCLI does, for `is_overridden`
        self.model.configure_optimizers = MethodType(fn, self.model)

    def _claim_run_dir(self) -> None:
        """Give this run `<root>/lightning_logs/version_N` of its own, claimed by one atomic mkdir (rank 0 only).

        Lightning's loggers choose the next version by listing the folder, so two runs started together
        shared one, and without a logger every run wrote into `<root>/checkpoints`. The claimed number goes
        to the TensorBoard or CSV logger (`_version`: no public setter), or, with `--trainer.logger false`,
        becomes the Trainer's root (`_default_root_dir`: no public setter); other ranks get the directory
        by Lightning's broadcast. A logger given an explicit version keeps it, unless another run is there.
        """
        if rank_zero_only.rank != 0:
            return
        trainer = self.trainer
        if not trainer.loggers:
            _require_attribute(trainer, "_default_root_dir")
            trainer._default_root_dir = str(claim_run_dir(Path(trainer.default_root_dir) / "lightning_logs"))
        elif isinstance(logger := trainer.loggers[0], TensorBoardLogger | CSVLogger):
            _require_attribute(logger, "_version")
            if logger._version is None:
                logger._version = int(claim_run_dir(logger.root_dir).name.removeprefix("version_"))
            elif Path(logger.log_dir).is_dir() and any(Path(logger.log_dir).iterdir()):
                raise ConfigError(
                    f"{logger.log_dir} holds another run: give --trainer.logger.init_args.version a new value,"
                    " or none for the next free one"
                )


def _require_attribute(obj: object, name: str) -> None:
    if not hasattr(obj, name):
        raise RuntimeError(f"{type(obj).__name__}.{name} is gone from this Lightning version: update _claim_run_dir")


def group_classes(parser: LightningArgumentParser) -> dict[str, type]:
    """The class of each fixed callback group (`checkpoint`, `figure`, ...), as jsonargparse records it.

    `group_class` is jsonargparse's own record of the class a group instantiates (no public accessor); checked
    here, so that a release without it fails loudly rather than leaving every option unchecked. The Trainer's
    group is instantiated by LightningCLI itself, and has none.
    """
    groups = {key: getattr(group, "group_class", None) for key, group in parser.groups.items()}
    if not isinstance(groups.get("checkpoint"), type):
        raise RuntimeError("jsonargparse no longer records a group's class (group_class): update group_classes")
    return {key: cls for key, cls in groups.items() if isinstance(cls, type)}


def refuse_functions(config: Namespace, prefix: str = "") -> None:
    """Refuse a config that names a function as a value (`--trainer.callbacks.on_fit_start os.system`).

    A function named in a config runs whenever the class it is given to calls it; classes (`class_path`)
    are the way to plug code in.
    """
    items = config.items() if isinstance(config, Namespace | dict) else enumerate(config)
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if inspect.isroutine(value) or isinstance(value, functools.partial):
            raise ConfigError(
                f"{name}: a config may not name a function ({getattr(value, '__name__', value)}): it would run as"
                " code; write a Callback or DataModule class instead"
            )
        if isinstance(value, Namespace | dict | list | tuple):
            refuse_functions(value, name)


def check_seed(seed: Any) -> None:
    """Refuse a seed numpy cannot take (it raised a ValueError inside Lightning)."""
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
        raise ConfigError(f"seed_everything must be in [0, 2**32 - 1], got {seed}")


def refuse_launches_that_hang(trainer: Trainer) -> None:
    """Refuse process layouts that would wait forever or swamp the machine.

    `--trainer.num_nodes N > 1` with no launcher to start the other nodes: rank 0 would wait for them
    forever. Lightning detects torchrun, SLURM, LSF, Kubeflow and MPI; by hand, set NODE_RANK (and
    MASTER_ADDR) on each node. More CPU processes than cores (`--trainer.devices 1000`): they never
    all start.
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.num_nodes > 1 and isinstance(environment, LightningEnvironment) and "NODE_RANK" not in os.environ:
        raise ConfigError(
            f"--trainer.num_nodes {trainer.num_nodes} needs a launcher that starts every node: run under torchrun"
            " or srun, or set MASTER_ADDR, MASTER_PORT and NODE_RANK on each node"
        )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
        raise ConfigError(
            f"--trainer.devices {trainer.num_devices} asks for more CPU processes than this machine's {cores} cores"
        )


def _bounded_yaml_load(stream: str) -> Any:
    """jsonargparse's YAML loader, refusing documents that would hang or crash the parser.

    YAML aliases share one object, so a few lines of nested aliases ("billion laughs") load at once but
    expand to billions of values when jsonargparse copies or walks them: the walk below counts each use,
    up to MAX_CONFIG_NODES, and the depth, up to MAX_CONFIG_DEPTH (thousands of nested brackets exhaust
    Python's recursion limit).
    """
    depth = 0  # brackets first: PyYAML recurses once per level, and tens of thousands overflow the C stack
    for bracket in re.finditer(r"[\[\]{}]", stream):
        depth += 1 if bracket[0] in "[{" else -1
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"a config nests deeper than {MAX_CONFIG_DEPTH} levels")
    value = _yaml_load(stream)
    pending, seen = [(value, 0)], 0
    while pending:
        item, depth = pending.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise ConfigError(f"a config expands to more than {MAX_CONFIG_NODES:,} values (nested YAML aliases?)")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"a config nests deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(item, dict | list):
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return _without_null_sections(value)


_yaml_load = get_loader("yaml")
_SECTIONS: set[str] = set()  # the config's sections (`model`, `trainer`, `figure`, ...), from the CLI's parsers


def _without_null_sections(value: Any) -> Any:
    """A config document with its null sections left out: `model:` with nothing under it sets nothing.

    An empty section is null in YAML (every option commented out, say), and jsonargparse took it for a value,
    failing with a TypeError deep inside. Left out, the section keeps its defaults, or what an earlier
    `--config` set; so does a null `init_args`. A section without defaults (`data`) is then reported missing.
    """
    if isinstance(value, dict):
        value = {key: v for key, v in value.items() if v is not None or key not in _SECTIONS}
        for section in (value.get(key) for key in _SECTIONS):
            if isinstance(section, dict) and "init_args" in section and section["init_args"] is None:
                del section["init_args"]
    return value


def cli_main(args: list[str] | None = None, cli_class: type[LinearRegressionCLI] | None = None) -> LinearRegressionCLI:
    """Build and run the CLI; `args` replaces `sys.argv[1:]` (tests pass a list).

    `cli_class` replaces LinearRegressionCLI with a subclass that parses and builds the same classes but runs
    something else (`serve` and `export`, see trained.py).
    """
    # Lightning 2.6 calls an API that torch 2.13 deprecates, once per run: noise a user can do nothing about.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Every run has a new directory, so a restored checkpoint callback always sees another dirpath.
    warnings.filterwarnings("ignore", message="The dirpath has changed from")
    # `--optimizer` replaces the model's SGD, as the README says.
    warnings.filterwarnings("ignore", message=r"`\w+\.configure_optimizers` will be overridden")  # any model class
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_quiet_litlogger_tip)
    set_loader("yaml", _bounded_yaml_load, exceptions=(yaml.YAMLError,))
    set_parsing_settings(import_path_denylist=IMPORT_DENYLIST)
    try:
        return (cli_class or LinearRegressionCLI)(
            LinearRegression,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults={
                "default_root_dir": "runs",
                "callbacks": [PredictionWriter()],
                "profiler": {"class_path": "lit_linreg.profiler.LeanProfiler"},
            },
            save_config_callback=AtomicSaveConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False, "prog": "lit-linreg"},
            args=args,
        )
    except ArgumentError as err:
        reworded = _name_the_model_option(str(err), sys.argv[1:] if args is None else args)
        if reworded is None:
            raise
        raise ArgumentError(None, reworded) from err


def _name_the_model_option(message: str, args: list[str]) -> str | None:
    """jsonargparse's error for a bad `--model` or `--model.X`, in a line naming what to change; None for others.

    With `--model` a class to choose, jsonargparse blames the class (`Parser key "model": Problem with given
    class_path ...`) for a misspelt or mistyped model option: the user wrote the option, so the message names it.
    """
    if not message.startswith('Parser key "model"'):
        return None
    if "does not correspond to a subclass of LinearRegression" in message:
        given = re.search(r"Given value: (.*)$", message)
        return f"--model {given[1] if given else ''} is not a subclass of lit_linreg.LinearRegression"
    found = re.search(r"Problem with given class_path '([\w.]+)':\n((?: {8}.*(?:\n|$))+)", message)
    if found is None:
        return None
    model_class, problem = found[1].rsplit(".", 1)[-1], textwrap.dedent(found[2])
    if not_accepted := re.fullmatch(r"Option '([\w.]+)' is not accepted", problem.strip()):
        option = not_accepted[1]
        if any(re.match(rf"--model\.(init_args\.)?{re.escape(option)}(=|$)", arg) for arg in args):
            return f"unrecognized arguments: --model.{option} (not an argument of {model_class})"
        return f"model class {model_class} does not accept option 'model.{option}'"
    return re.sub(r'^Parser key "', 'Parser key "model.', problem, count=1)


def _quiet_litlogger_tip(record: logging.LogRecord) -> bool:
    """Drop Lightning's advertisement for its cloud logger, printed on every run."""
    return "litlogger" not in str(record.msg)


def main(args: list[str] | None = None) -> int:
    """Console entry point: run the CLI, reporting user errors as one line and a non-zero exit code.

    Exit 2 for a mistake in a flag, config, data file or checkpoint; 1 when training diverged, memory ran out
    or a file could not be written (full disk, no permission); 128 + the signal when one stopped the run (143
    for SIGTERM, 130 for Ctrl-C).
    Any other exception is a bug and keeps its traceback.
    """
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] in (["serve"], ["export"]):  # they use a trained model, not a Trainer: see serve.py, export.py
            importlib.import_module(f"lit_linreg.{argv[0]}").run(argv[1:])
        else:
            with _sigterm_raises():
                _raise_if_signalled(cli_main(args))
    except (ArgumentError, MisconfigurationException) as err:  # a bad flag or config; Trainer options that clash
        return _fail(err, err, code=2)
    except UnicodeDecodeError as err:  # CSV files report their own; this is jsonargparse reading a --config file
        reason = f"a --config file is not UTF-8 text ({err.reason} at byte {err.start}): give a YAML file"
        return _fail(err, reason, code=2)
    except SIGTERMException as err:  # Lightning stops at the next batch or epoch boundary, with SystemExit(0)
        return _fail(err, _stopped("stopped by SIGTERM", err), code=128 + signal.SIGTERM)
    except KeyboardInterrupt as err:  # Ctrl-C before or after the Trainer ran
        return _fail(err, _stopped("interrupted", err), code=128 + signal.SIGINT)
    except SystemExit as err:
        if not isinstance(err.__context__, KeyboardInterrupt):
            raise
        # Lightning ends a run that Ctrl-C interrupted with sys.exit(1): a shell must see 130, as for any program.
        # It also leaves Ctrl-C ignored, for its shutdown: that is over, and a caller of main() gets it back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return _fail(err, _stopped("interrupted", err.__context__), code=128 + signal.SIGINT)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is not None:
            return _fail(err, user_error, code=1 if isinstance(user_error, DivergenceError) else 2)
        if isinstance(err, RuntimeError) and str(err).startswith(_LIGHTNING_CONFIG_ERRORS):
            return _fail(err, err, code=2)
        if wanted := _memory_wanted(err):
            reason = f"out of memory ({wanted}): lower the sizes the config asks for (data.n_samples, ...)"
            return _fail(err, reason, code=1)
        system_error = _find_os_error(err)
        if system_error is None:
            raise
        where = f"{system_error.filename}: " if system_error.filename else ""
        return _fail(err, f"{where}{system_error.strerror}", code=1)
    return 0


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Make a SIGTERM outside Lightning's loops raise SIGTERMException, as one inside them ends in one.

    Lightning handles SIGTERM only from the start of its loops to its teardown, before `on_fit_end`: one that came
    while the data was read, or during the end-of-fit summary, killed the process with no word. Inside the loops
    Lightning's handler calls this one too (it keeps the handler it found), which then leaves the stop to it: at
    the next batch or epoch boundary, after last.ckpt is written.
    """

    def handler(signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is handler:  # not within Lightning's loops
            raise SIGTERMException

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_if_signalled(cli: LinearRegressionCLI) -> None:
    """Raise SIGTERMException for a SIGTERM that came after Lightning's last look for one.

    Lightning looks between batches and epochs only: a SIGTERM received in `on_train_end`, in the last batch of
    `validate` or `test`, or during `predict`, whose loop never looks, let the run exit 0, and a scheduler took a
    stopped job for a finished one.
    """
    trainer = getattr(cli, "trainer", None)
    if trainer is not None and trainer.received_sigterm:
        err = SIGTERMException()
        last = next((callback for callback in trainer.callbacks if isinstance(callback, LastCheckpoint)), None)
        err.stopped_in = trainer.state.fn, last.written() if last is not None else None
        raise err


def _stopped(what: str, err: BaseException) -> str:
    """What a run stopped by a signal left behind, from what `LastCheckpoint.on_exception` noted on `err`."""
    stage, saved = getattr(err, "stopped_in", (None, None))
    if stage is None:  # before the Trainer started
        return what
    if stage != "fit":
        return f"{what} during {getattr(stage, 'value', stage)}: its output may be incomplete; run it again"
    if saved is None:
        return f"{what} before the first epoch ended: no checkpoint was written"
    return f"{what}; {saved} holds the last completed epoch: resume with --ckpt_path last"


def _memory_wanted(err: BaseException) -> str | None:
    """What an allocation that failed asked for ("670.6 GiB asked for"), or None if none failed.

    Sizes within int64 but past the machine (`--data.n_samples 100000000000`) fail inside torch or numpy.
    """
    if isinstance(err, MemoryError | torch.OutOfMemoryError) or "can't allocate memory" in str(err):
        asked = re.search(r"allocate (\d+) bytes", str(err))
        return f"{int(asked[1]) / 2**30:.1f} GiB asked for" if asked else type(err).__name__
    return None


# Lightning's RuntimeErrors that are a mistake in the config, found only once training runs.
_LIGHTNING_CONFIG_ERRORS = ("Early stopping conditioned on metric",)


def _find_os_error(err: BaseException) -> OSError | None:
    """An OSError about a file (full disk, read-only or missing directory) that `err` is or was caused by."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _FILE_ERRORS:
            return err
        err = err.__cause__ or err.__context__
    return None


# Full disk or quota, no permission, read-only file system, a path through a file or a missing directory.
_FILE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}


def _fail(err: BaseException, reason: Exception | str, code: int) -> int:
    """Print `reason` as one line on stderr and return `code`; re-raise `err` when LIT_LINREG_DEBUG is true."""
    if isinstance(err, Exception) and os.environ.get("LIT_LINREG_DEBUG", "").strip().lower() in ("1", "true", "yes"):
        raise err
    if denied := re.search(r"Importing '([\w.]+)' is not allowed", str(reason)):  # jsonargparse's import denylist
        reason = f"a config may not name {denied[1]}: naming it would run code (see the README: a config is code)"
    if missing := re.fullmatch(r"the following arguments are required: \w+\.(\w+)", str(reason).strip()):
        reason = f"no {missing[1]} given (its section is missing or null): choose one with --{missing[1]} CLASS"
    lines = [line.strip() for line in str(reason).strip().splitlines() if line.strip()]
    # jsonargparse explains a bad value of a Union-typed option (data, trainer.max_epochs, ...) by listing each
    # type it tried and dumping the value it was given: noise next to the one error that matters.
    noise = ("Does not validate against any", "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'None")
    dumped = [line for line in lines if line.startswith("Given value:") and any(c in line for c in "({[")]
    lines = [line.removeprefix("- ") for line in lines if not line.startswith(noise) and line not in dumped]
    print(f"lit-linreg: error: {' '.join(lines)}", file=sys.stderr)
    return code
