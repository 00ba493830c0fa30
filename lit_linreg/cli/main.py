"""The command line: `python -m lit_linreg {fit,validate,test,predict} --config configs/X.yaml`.

A LightningCLI subclass takes the model class (`--model`: LinearRegression or a subclass), adds the project's
callbacks as config groups (`checkpoint`, `reference`, `coefficients`, `figure`, `dashboard`), links the data's
sizes into the model, resolves `--ckpt_path last` and `best` within the experiment, gives each run a directory of
its own and writes every file there atomically. `main` turns every mistake a user can make into one line on stderr
and a non-zero exit; set LIT_LINREG_DEBUG=1 to see the traceback instead.

What a config may not do is checked in config_guards.py, a stop by a signal is reported by signals.py, and
error_report.py words each failure as its one line.
"""

from __future__ import annotations

import functools
import gc
import importlib
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from types import MethodType
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentError, Namespace, set_loader, set_parsing_settings
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback, instantiate_class
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_linreg.callbacks import CoefficientLogger, FitFigure, LeastSquaresReference, PredictionWriter
from lit_linreg.cli.checkpoint import (
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
from lit_linreg.cli.checkpoint_stamp import refuse_seen_rows
from lit_linreg.cli.config_guards import (
    _SECTIONS,
    IMPORT_DENYLIST,
    bounded_yaml_load,
    check_seed,
    refuse_functions,
    refuse_launches_that_hang,
    refuse_run_dirs_in_object_stores,
)
from lit_linreg.cli.constraints import check_config
from lit_linreg.cli.dashboard import TensorBoardLayout
from lit_linreg.cli.error_report import (
    LIGHTNING_CONFIG_ERRORS,
    fail,
    find_os_error,
    memory_wanted,
    name_the_model_option,
)
from lit_linreg.cli.signals import raise_if_signalled, sigterm_raises, stopped
from lit_linreg.errors import ConfigError, DivergenceError, find_user_error
from lit_linreg.model.module import LinearRegression


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


def give_data_the_dtype(checkpoint: dict, datamodule: Any) -> None:
    """A model that trained in float64 (a table beyond float32, see `LinearRegression._precondition`) tests
    and predicts on float64 rows: rounded to float32 first, its inputs would lose what it trained to resolve."""
    state = checkpoint.get("state_dict", {})
    x_mean = state.get("design.x_mean", state.get("x_mean"))  # the latter in checkpoints written before `design`
    if x_mean is not None and x_mean.dtype == torch.float64 and hasattr(datamodule, "dtype"):
        datamodule.dtype = torch.float64


class LinearRegressionCLI(LightningCLI):
    """LightningCLI for `LinearRegression` with any DataModule that exposes `in_features` / `out_features`."""

    def __init__(self, *positional: Any, args: Any = None, **kwargs: Any) -> None:
        argv = sys.argv[1:] if args is None else args
        self._named = argv[0] if isinstance(argv, list | tuple) and argv and isinstance(argv[0], str) else None
        super().__init__(*positional, args=args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        """LightningCLI's subcommands, cut to the one this run names.

        Each subcommand's parser reads every class signature again (about 0.1 s each), and a run uses one. With
        none named (`lit-linreg --help`) or a name that is not one, all of them, so the help and the error list
        them. LightningCLI asks the instance (`self.subcommands()`), so this method replaces its staticmethod.
        """
        every = LightningCLI.subcommands()
        return {self._named: every[self._named]} if self._named in every else every

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
        refuse_run_dirs_in_object_stores(config)
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
            self.model.on_load_checkpoint(self._checkpoint)  # as Lightning calls it before loading: older keys mapped
            check_compatible(self._checkpoint, path, self.model)
            check_tensors(self._checkpoint, path, self.model)
            if self.subcommand == "fit":
                check_resumable(self._checkpoint, path, optimizer)
            else:
                give_data_the_dtype(self._checkpoint, self.datamodule)
                refuse_seen_rows(self._checkpoint, path, self.datamodule, self._experiment, self.subcommand)
        self._schedule_the_default_optimizer()
        self.trainer.callbacks.append(RunStamp(self._experiment, optimizer, settings))
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # unless the user chose another
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        self._claim_run_dir()  # last: a run refused above leaves no directory behind

    def before_predict(self) -> None:
        """predictions.csv gets each batch's predictions (PredictionWriter): Lightning keeps no list growing with the
        rows unless `--return_predictions true` asks."""
        if self.config_init["predict"].get("return_predictions") is None:
            self.config_init["predict"]["return_predictions"] = False

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


def cli_main(args: list[str] | None = None, cli_class: type[LinearRegressionCLI] | None = None) -> LinearRegressionCLI:
    """Build and run the CLI; `args` replaces `sys.argv[1:]` (tests pass a list).

    `cli_class` replaces LinearRegressionCLI with a subclass that parses and builds the same classes but runs
    something else (`serve` and `export`, see trained.py).
    """
    # Lightning 2.6 calls an API that torch 2.13 deprecates, once per run: noise a user can do nothing about.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Every run has a new directory, so a restored checkpoint callback always sees another dirpath.
    warnings.filterwarnings("ignore", message="The dirpath has changed from")
    # `--optimizer` replacing the model's SGD is what the option is for, not news to warn about.
    warnings.filterwarnings("ignore", message=r"`\w+\.configure_optimizers` will be overridden")  # any model class
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_quiet_litlogger_tip)
    set_loader("yaml", bounded_yaml_load, exceptions=(yaml.YAMLError,))
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
                "profiler": {"class_path": "lit_linreg.cli.profiler.LeanProfiler"},
            },
            save_config_callback=AtomicSaveConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False, "prog": "lit-linreg"},
            args=args,
        )
    except ArgumentError as err:
        reworded = name_the_model_option(str(err), sys.argv[1:] if args is None else args)
        if reworded is None:
            raise
        raise ArgumentError(None, reworded) from err


def _quiet_litlogger_tip(record: logging.LogRecord) -> bool:
    """Drop Lightning's advertisement for its cloud logger, printed on every run."""
    return "litlogger" not in str(record.msg)


def freeze_imports() -> None:
    """Keep the ~400,000 objects the imports made out of later garbage collections (`gc.freeze`; each full pass
    walked them all), then turn the collector on (see __main__.py). Called by a process's entry point only."""
    gc.freeze()
    gc.enable()


def main(args: list[str] | None = None) -> int:
    """Console entry point: run the CLI, reporting user errors as one line and a non-zero exit code.

    Exit 2 for a mistake in a flag, config, data file or checkpoint; 1 when training diverged, memory ran out
    or a file could not be written (full disk, no permission); 128 + the signal when one stopped the run (143
    for SIGTERM, 130 for Ctrl-C).
    Any other exception is a bug and keeps its traceback.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if args is None:  # this process's own command (`python -m lit_linreg`, `lit-linreg`), not a caller's
        freeze_imports()
    try:
        if argv[:1] in (["serve"], ["export"]):  # a trained model, not a Trainer: see deploy/serve_cli.py, export.py
            command = {"serve": "serve_cli", "export": "export"}[argv[0]]
            importlib.import_module(f"lit_linreg.deploy.{command}").run(argv[1:])
        else:
            with sigterm_raises():
                cli = cli_main(args)
                raise_if_signalled(getattr(cli, "trainer", None))
    except (ArgumentError, MisconfigurationException) as err:  # a bad flag or config; Trainer options that clash
        return fail(err, err, code=2)
    except UnicodeDecodeError as err:  # CSV files report their own; this is jsonargparse reading a --config file
        reason = f"a --config file is not UTF-8 text ({err.reason} at byte {err.start}): give a YAML file"
        return fail(err, reason, code=2)
    except SIGTERMException as err:  # Lightning stops at the next batch or epoch boundary, with SystemExit(0)
        return fail(err, stopped("stopped by SIGTERM", err), code=128 + signal.SIGTERM)
    except KeyboardInterrupt as err:  # Ctrl-C before or after the Trainer ran
        return fail(err, stopped("interrupted", err), code=128 + signal.SIGINT)
    except SystemExit as err:
        if not isinstance(err.__context__, KeyboardInterrupt):
            raise
        # Lightning ends a run that Ctrl-C interrupted with sys.exit(1): a shell must see 130, as for any program.
        # It also leaves Ctrl-C ignored, for its shutdown: that is over, and a caller of main() gets it back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return fail(err, stopped("interrupted", err.__context__), code=128 + signal.SIGINT)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is not None:
            return fail(err, user_error, code=1 if isinstance(user_error, DivergenceError) else 2)
        if isinstance(err, RuntimeError) and str(err).startswith(LIGHTNING_CONFIG_ERRORS):
            return fail(err, err, code=2)
        if wanted := memory_wanted(err):
            reason = f"out of memory ({wanted}): lower the sizes the config asks for (data.n_samples, ...)"
            return fail(err, reason, code=1)
        system_error = find_os_error(err)
        if system_error is None:
            raise
        where = f"{system_error.filename}: " if system_error.filename else ""
        return fail(err, f"{where}{system_error.strerror}", code=1)
    return 0
