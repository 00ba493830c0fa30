"""Checkpoints that survive a kill: written atomically, one run directory each, `last.ckpt` kept current.

Every run owns a directory of its own (`claim_run_dir`), every file is written atomically (`atomic_write`),
`LastCheckpoint` rewrites `last.ckpt` every epoch (or N steps) and `BestCheckpoint` keeps the best ones.
Reading them back is in checkpoint_load.py (safe loading and the checks that a checkpoint fits),
checkpoint_stamp.py (the experiment each checkpoint is stamped with) and checkpoint_find.py (`--ckpt_path last`
and `best`); their public names are importable from here too.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_linreg.cli.checkpoint_find import find_checkpoint, find_last
from lit_linreg.cli.checkpoint_load import check_compatible, check_resumable, check_tensors, load_checkpoint, non_finite
from lit_linreg.cli.checkpoint_stamp import NOT_TRAINING_DATA, STAMP, RunStamp, changed_contents, experiment, stamp_of
from lit_linreg.errors import ConfigError

__all__ = [
    "NOT_TRAINING_DATA",
    "STAMP",
    "AtomicCheckpointIO",
    "BestCheckpoint",
    "LastCheckpoint",
    "RunStamp",
    "atomic_write",
    "changed_contents",
    "check_compatible",
    "check_resumable",
    "check_tensors",
    "claim_run_dir",
    "experiment",
    "find_checkpoint",
    "find_last",
    "load_checkpoint",
    "non_finite",
    "stamp_of",
]


def atomic_write(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, and rename it into place.

    A rename within one directory is atomic, so a kill or a full disk at any moment leaves either the
    complete old file or the complete new one, never a part. The file gets the mode a plain `open`
    would give it (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:  # write(), fsync(): name it
            err.filename = str(path)
        raise
    _fsync_dir(path.parent)  # make the rename itself durable


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint with `atomic_write`; loads with `weights_only=True` (tensors and primitives only)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getbuffer())

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None):
        return load_checkpoint(path, map_location=map_location)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def claim_run_dir(parent: str | os.PathLike) -> Path:
    """Create and return `parent/version_N` for the next free N: one `mkdir`, atomic, so one run owns it.

    Lightning's loggers pick the next version by listing the folder, so two runs started at the same
    moment both chose version_0; `mkdir` fails for the second, which takes the next number instead.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name[8:]) for p in parent.glob("version_*") if p.name[8:].isdigit()]
    n = max(versions, default=-1) + 1
    while True:
        try:
            (parent / f"version_{n}").mkdir()
            return parent / f"version_{n}"
        except FileExistsError:
            n += 1


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint, the `checkpoint` group: the best checkpoints by the monitored metric.

    The same callback at less cost a step: its `on_train_batch_end` returns at once when neither
    `every_n_train_steps` nor `train_time_interval` is set (where ModelCheckpoint's own would reach the same
    return after reading the Trainer's state), and its `state_key` is computed once, as ModelCheckpoint's, so
    a checkpoint keeps its best-model state under the key ModelCheckpoint gives it.
    """

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_state_key")  # its settings are fixed when it is built; asked at every hook
        if key is None:
            key = self._state_key = super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)
        return key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._every_n_train_steps >= 1 or self._train_time_interval is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class LastCheckpoint(ModelCheckpoint):
    """Rewrites `last.ckpt` at the end of every training epoch, and every N training steps if asked.

    `ModelCheckpoint(monitor=..., save_last=True)` rewrites last.ckpt only in an epoch that also saves a
    top-k checkpoint, so a run that stops improving would resume from an old epoch. This callback keeps
    `--ckpt_path last` at most one epoch behind, or N steps with `every_n_train_steps`; the `checkpoint`
    group keeps the best ones. A mid-epoch last.ckpt holds the training loader's position (see loader.py),
    so a run resumed from it goes on at the next batch, bit for bit.

    Args:
        every_n_train_steps: Also write last.ckpt after every this many training steps (None: at epoch ends only).
    """

    def __init__(self, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ConfigError(f"last.every_n_train_steps must be at least 1 (or null), got {every_n_train_steps}")
        # ModelCheckpoint's own step trigger would turn its epoch-end saves off: steps are counted here instead.
        super().__init__(
            filename="last", monitor=None, save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True
        )
        self.every_n_train_steps = every_n_train_steps
        self._state_key = super().state_key

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, computed once: its settings never change, and Lightning asks for it at every hook."""
        return self._state_key

    def written(self) -> Path | None:
        """The last.ckpt this run wrote, if it wrote one yet."""
        path = Path(self.dirpath or ".", self.filename + self.FILE_EXTENSION)
        return path if self.dirpath and path.is_file() else None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A run stopped by a signal or Ctrl-C ends in one line from the CLI, saying where it can resume from.
        super().on_exception(trainer, pl_module, exception)
        exception.stopped_in = trainer.state.fn, self.written()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        every = self.every_n_train_steps
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches  # the epoch-end save follows at once
        if every and trainer.global_step % every == 0 and not last_of_epoch and not trainer.sanity_checking:
            # A full checkpoint, said so: Lightning logs a line at every save that leaves `weights_only` unset.
            trainer.save_checkpoint(os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION), weights_only=False)
