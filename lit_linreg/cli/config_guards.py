"""What a config may not do: run code, hang or crash the parser, or start processes that wait forever.

A config names classes by import path, and naming one runs its code (docs/reliability.md, "A config is code").
The CLI installs `bounded_yaml_load` as jsonargparse's YAML loader and `IMPORT_DENYLIST` as its import denylist,
and calls the other checks once a config is parsed and once its Trainer is built.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from typing import Any

from jsonargparse import Namespace, get_loader
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator

from lit_linreg.errors import ConfigError

# jsonargparse refuses these paths (shell, files, network: its default denylist) once a list is set; added here:
# modules that run code on import or take code as arguments. What a config may still name is listed in
# docs/reliability.md ("A config is code").
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


def refuse_run_dirs_in_object_stores(config: Namespace) -> None:
    """Refuse, in one line, a run directory or checkpoint named by an object-store URL (`s3://`, `gs://`, ...).

    A run writes where Lightning's fsspec could reach, but two guarantees would not hold there: a run claims its
    `version_N` by an atomic mkdir, and a checkpoint is written beside its place and renamed over it, so that a
    kill leaves the last one whole (see checkpoint.py). An object store has neither an atomic mkdir nor a rename.
    Tables may be read from a bucket (`--data.path`); runs go to a file system, and are copied to a bucket after.
    """
    trainer = config.get("trainer") or {}
    logger = trainer.get("logger")
    named = {
        "--trainer.default_root_dir": trainer.get("default_root_dir"),
        "--trainer.logger.init_args.save_dir": logger.get("init_args", {}).get("save_dir")
        if isinstance(logger, Namespace | dict)
        else None,
        "--ckpt_path": config.get("ckpt_path"),
    }
    for flag, value in named.items():
        if isinstance(value, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
            what = "read a checkpoint from" if flag == "--ckpt_path" else "write runs to"
            raise ConfigError(
                f"{flag} {value}: this project cannot {what} an object store (a run directory is claimed by an"
                " atomic mkdir and each checkpoint written by an atomic rename, which object stores lack): give a"
                " path on a local or shared file system and copy the run to the bucket after"
                " (aws s3 sync runs/ s3://bucket/runs/), or mount the bucket"
            )


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


def bounded_yaml_load(stream: str) -> Any:
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


_yaml_load = get_loader("yaml")  # jsonargparse's own, taken before the CLI installs bounded_yaml_load
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
