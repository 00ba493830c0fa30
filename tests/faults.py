"""Faults injected into a training process by the tests: callbacks given with `--trainer.callbacks+=...`.

The Kill* ones end their own process with SIGKILL, as the OOM killer or a pre-empted node would: no exception,
no cleanup, no `finally` blocks, no flushing of buffers. The others send SIGTERM, poison a buffer with inf,
take a function (which a config must not give), or fail a write as a full disk does.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

import lightning as L

from lit_linreg.cli import checkpoint


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillInBatch(L.Callback):
    """SIGKILL right after training batch `batch` of epoch `epoch` (both counted from 0)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            _kill_self()


class KillInCheckpointWrite(L.Callback):
    """SIGKILL inside the `fsync`-th fsync of a checkpoint write in epoch `epoch` (counted from 0).

    In each epoch best-*.ckpt is written after validation, then last.ckpt at the end of the training
    epoch; each write fsyncs the file (1, 3) and then its directory (2, 4). A kill at 1 or 3 leaves a
    complete temporary file that was never renamed into place.
    """

    def __init__(self, epoch: int, fsync: int) -> None:
        self.epoch, self.fsync = epoch, fsync

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            checkpoint.os = _OsKillingAtFsync(self.fsync)  # only the checkpoint module's fsyncs count


class _OsKillingAtFsync:
    """The os module, except that its `n`-th call to fsync kills the process."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __getattr__(self, name: str):
        return getattr(os, name)

    def fsync(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.n:
            _kill_self()
        os.fsync(fd)


class SigtermAt(L.Callback):
    """Send this process SIGTERM at the start of training epoch `epoch`, as a scheduler pre-empting a job would.

    Lightning's handler only notes the signal; the loop stops after the current batch.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class SignalAt(L.Callback):
    """Send this process signal `signum` (a name: "SIGTERM", "SIGINT", "SIGHUP", ...) at Lightning hook `hook`, once.

    `epoch` picks the training epoch (counted from 0) of the hooks that come every epoch; the others ignore it.
    """

    HOOKS = (
        "on_sanity_check_start",
        "on_train_batch_start",
        "on_validation_batch_start",
        "on_train_epoch_end",
        "on_train_end",
        "on_fit_end",
        "on_predict_batch_start",
    )

    def __init__(self, signum: str = "SIGTERM", hook: str = "on_train_batch_start", epoch: int = 0) -> None:
        assert hook in self.HOOKS, hook
        self.signum, self.hook, self.epoch, self.sent = getattr(signal, signum), hook, epoch, False
        for name in self.HOOKS:
            setattr(self, name, self._send if name == hook else _nothing)

    def _send(self, trainer, *args, **kwargs) -> None:
        per_epoch = self.hook in ("on_train_batch_start", "on_validation_batch_start", "on_train_epoch_end")
        in_sanity_check = trainer.sanity_checking and self.hook != "on_sanity_check_start"
        if not self.sent and (not per_epoch or trainer.current_epoch == self.epoch) and not in_sanity_check:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def _nothing(*args, **kwargs) -> None:
    pass


class PoisonBuffer(L.Callback):
    """Fill the model's `design.y_std` with inf at the end of training epoch `epoch`, before last.ckpt is written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            pl_module.design.y_std.fill_(float("inf"))


class CallsAFunction(L.Callback):
    """A callback that takes a function: what a config must not be able to hand it."""

    def __init__(self, fn: Callable[[], object] | None = None) -> None:
        self.fn = fn


class OsFailingAtFsync(_OsKillingAtFsync):
    """The os module, except that its `n`-th call to fsync fails with OSError(`code`), as a full disk would."""

    def __init__(self, n: int, code: int = errno.ENOSPC) -> None:
        super().__init__(n)
        self.code = code

    def fsync(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise OSError(self.code, os.strerror(self.code))
        os.fsync(fd)
