"""Faults injected into a training process by the tests: callbacks given with `--trainer.callbacks+=...`.

Each one ends its own process with SIGKILL, as the OOM killer or a pre-empted node would: no exception,
no cleanup, no `finally` blocks, no flushing of buffers.
"""

from __future__ import annotations

import os
import signal

import lightning as L


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
    """SIGKILL inside the `fsync`-th call to os.fsync from the end of training epoch `epoch` (counted from 0).

    Lightning runs checkpoint callbacks after every other callback's hook, and writes them after the
    epoch's validation, so from this callback's `on_train_epoch_end` on, the fsyncs belong to the epoch's
    checkpoints: best-*.ckpt's file (1) and directory (2), then last.ckpt's (3, 4).
    """

    def __init__(self, epoch: int, fsync: int) -> None:
        self.epoch, self.fsync = epoch, fsync

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            return
        real_fsync, calls = os.fsync, []

        def fsync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == self.fsync:
                _kill_self()
            real_fsync(fd)

        os.fsync = fsync
