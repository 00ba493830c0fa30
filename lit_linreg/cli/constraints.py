"""The allowed range of every integer option, declared once per class and checked where the CLI parses a config.

A count or an interval of 0 (`--trainer.check_val_every_n_epoch 0`, `--figure.max_points 0`) used to reach a
modulo or an empty reduction deep inside Lightning or torch; a negative one ran with a meaning nobody chose; one
past int64 overflowed inside torch. Each rule is declared here once, by class, as scikit-learn declares its
`_parameter_constraints`; a subclass inherits its bases' rules (`BestCheckpoint` those of `ModelCheckpoint`).
`check_config` walks a parsed config and refuses the first value out of range in one line, before any class is
built. A class without an entry has no integer option to check, and `tests/test_trust.py` fails for an
integer option of the Trainer or of lit_linreg that has no rule here.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lit_linreg.callbacks import CoefficientLogger, FitFigure, LeastSquaresReference
from lit_linreg.cli.checkpoint import LastCheckpoint
from lit_linreg.data.datamodules import InMemoryDataModule, SyntheticDataModule
from lit_linreg.errors import ConfigError
from lit_linreg.model.module import LinearRegression
from lit_linreg.model.nets import MLP

INT64_MAX = 2**63 - 1  # torch and Lightning keep counts and seeds as int64: a larger one overflows inside them


@dataclass(frozen=True)
class Interval:
    """Integers in [low, high], and the values outside it that mean something of their own.

    Args:
        low: The smallest value allowed.
        high: The largest value allowed.
        special: Values allowed outside [low, high], each with what it means (-1: "no limit").
        null: What null means, when the option takes it (shown in the message only).
    """

    low: int
    high: float = INT64_MAX
    special: Mapping[int, str] = field(default_factory=dict)
    null: str | None = None

    def allows(self, value: float) -> bool:
        return self.low <= value <= self.high or value in self.special

    def describe(self, value: float) -> str:
        """The rule `value` breaks, as the end of "must be ...": its upper bound only if `value` is past it."""
        if value > self.high:
            return "at most 2**63 - 1 (int64)" if self.high == INT64_MAX else f"at most {self.high}"
        rule = f"at least {self.low}" if self.high >= INT64_MAX else f"in [{self.low}, {self.high}]"
        rule += "".join(f", or {value} for {meaning}" for value, meaning in self.special.items())
        return rule + (f" (or null for {self.null})" if self.null else "")


COUNT = Interval(1)  # how many, or every how many: 0 divides by zero or reduces nothing
SIZE = Interval(0)  # how many at most, 0 meaning none
SEED = Interval(0)  # numpy and torch refuse negative seeds

# What each integer option allows, by the class whose __init__ takes it. An option that may be null is
# checked only when it is not; a float (`limit_train_batches: 0.5`) against the same bounds, the rest of its
# rule (a fraction in [0, 1]) being the class's own to check.
CONSTRAINTS: dict[type, dict[str, Interval]] = {
    Trainer: {
        "num_nodes": COUNT,
        "devices": Interval(1, special={-1: "every device"}),
        "fast_dev_run": SIZE,
        "max_epochs": Interval(1, special={-1: "no limit"}, null="1000, or no limit with max_steps"),
        "min_epochs": SIZE,
        "max_steps": Interval(1, special={-1: "no limit"}),
        "max_time": SIZE,  # each of days, hours, minutes, seconds
        "min_steps": SIZE,
        "limit_train_batches": SIZE,
        "limit_val_batches": SIZE,
        "limit_test_batches": SIZE,
        "limit_predict_batches": SIZE,
        "overfit_batches": SIZE,
        "val_check_interval": COUNT,
        "check_val_every_n_epoch": Interval(1, null="val_check_interval alone"),
        "num_sanity_val_steps": Interval(0, special={-1: "every batch"}),
        "log_every_n_steps": Interval(0, null="50; 0 logs no step"),
        "accumulate_grad_batches": COUNT,
        "gradient_clip_val": Interval(0, high=math.inf),
        "reload_dataloaders_every_n_epochs": SIZE,
    },
    ModelCheckpoint: {
        "save_top_k": Interval(0, special={-1: "every checkpoint"}),
        "every_n_train_steps": SIZE,
        "every_n_epochs": SIZE,
    },
    EarlyStopping: {"patience": SIZE},
    LastCheckpoint: {"every_n_train_steps": Interval(1, null="epoch ends only")},
    LeastSquaresReference: {
        "max_table_coefficients": SIZE,
        "stop_when_stalled": Interval(1, null="never stop"),
        "stop_at_relative_gap": Interval(0, high=math.inf, null="never stop"),
        "refine_to_relative_gap": Interval(0, high=math.inf, null="stop at stop_at_relative_gap"),
    },
    CoefficientLogger: {"max_scalars": SIZE},
    FitFigure: {"max_points": COUNT},
    InMemoryDataModule: {"batch_size": Interval(1, null="full batch"), "seed": SEED},
    SyntheticDataModule: {"n_samples": COUNT, "n_features": COUNT, "n_targets": COUNT},
    LinearRegression: {"in_features": COUNT, "out_features": COUNT},
    MLP: {"hidden": COUNT},  # each width
    # torch's optimizers and schedulers a config may name (`--optimizer LBFGS`, `--lr_scheduler StepLR`)
    torch.optim.LBFGS: {"max_iter": COUNT, "max_eval": COUNT, "history_size": COUNT},
    torch.optim.lr_scheduler.StepLR: {"step_size": COUNT},
    torch.optim.lr_scheduler.MultiStepLR: {"milestones": SIZE},
    torch.optim.lr_scheduler.ConstantLR: {"total_iters": SIZE},
    torch.optim.lr_scheduler.LinearLR: {"total_iters": COUNT},
    torch.optim.lr_scheduler.PolynomialLR: {"total_iters": COUNT},
    torch.optim.lr_scheduler.CosineAnnealingLR: {"T_max": COUNT},
    torch.optim.lr_scheduler.CosineAnnealingWarmRestarts: {"T_0": COUNT, "T_mult": COUNT},
    torch.optim.lr_scheduler.CyclicLR: {"step_size_up": COUNT, "step_size_down": COUNT},
    torch.optim.lr_scheduler.OneCycleLR: {"total_steps": COUNT, "epochs": COUNT, "steps_per_epoch": COUNT},
    torch.optim.lr_scheduler.ReduceLROnPlateau: {"patience": SIZE, "cooldown": SIZE},
}


# Classes named rather than imported: a toy fit does not load the table reader (pyarrow) to check its options.
CONSTRAINTS_BY_NAME: dict[str, dict[str, Interval]] = {
    "lit_linreg.data.table_datamodule.TableDataModule": {"shuffle_buffer": COUNT},
}


def constraints_of(cls: type) -> dict[str, Interval]:
    """The rules of `cls`'s integer options: its own entry over those of its bases."""
    rules: dict[str, Interval] = {}
    for base in reversed(cls.__mro__):
        rules |= CONSTRAINTS.get(base, {}) | CONSTRAINTS_BY_NAME.get(f"{base.__module__}.{base.__qualname__}", {})
    return rules


def check_arguments(cls: type, arguments: Mapping[str, Any], prefix: str) -> None:
    """Refuse the first of `arguments` (the init args of `cls`) out of its range: a ConfigError naming `prefix.name`."""
    for name, rule in constraints_of(cls).items():
        value = arguments.get(name)
        for item in _integers(value):
            if isinstance(item, int | float) and not isinstance(item, bool) and not rule.allows(item):
                each = "" if item is value or isinstance(value, str) else "each of "
                shown = int(value) if isinstance(value, float) and value.is_integer() else value  # `-1`, as written
                raise ConfigError(f"{each}{prefix}.{name} must be {rule.describe(item)}, got {shown}")


def _integers(value: Any) -> list[Any]:
    """An option's values to check: itself, each item of a list (`hidden`), each value of a mapping (`max_time`).

    An integer written where a string is also allowed (`--trainer.devices 0`, `--trainer.max_time -1`) arrives
    as a string: it is checked as the integer it is.
    """
    if isinstance(value, Namespace):
        value = vars(value)
    items = list(value.values()) if isinstance(value, Mapping) else value
    items = list(items) if isinstance(items, list | tuple) else [items]
    return [int(item) if isinstance(item, str) and re.fullmatch(r"\s*-?\d+\s*", item) else item for item in items]


def check_config(config: Namespace, groups: Mapping[str, type]) -> None:
    """Check every integer option of a parsed config against CONSTRAINTS.

    Args:
        config: One subcommand's parsed config.
        groups: The classes of the config's fixed groups (`trainer`: Trainer, `figure`: FitFigure, ...);
            any other class is found by its `class_path`, wherever it is (`data`, `model.net`, `trainer.callbacks`).
    """
    for key, cls in groups.items():
        if isinstance(section := config.get(key), Namespace):
            check_arguments(cls, section, key)
    _check_class_paths(config, "")


def _check_class_paths(node: Any, prefix: str) -> None:
    if isinstance(node, Namespace | dict):
        init_args = node.get("init_args")
        cls = _import(node.get("class_path"))
        if cls is not None and isinstance(init_args, Namespace | dict):
            check_arguments(cls, init_args, prefix)
        items = node.items() if isinstance(node, dict) else vars(node).items()
        for key, value in items:
            _check_class_paths(value, prefix if key == "init_args" else f"{prefix}.{key}".lstrip("."))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _check_class_paths(value, f"{prefix}.{i}")


def _import(class_path: Any) -> type | None:
    """The class a `class_path` names (jsonargparse imported it while parsing); None for anything else."""
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # not ours to report: jsonargparse refused it already
        return None
    return found if isinstance(found, type) else None
