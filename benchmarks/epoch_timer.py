"""A callback that prints how long each training epoch took, end to end."""

import json
import time

import lightning as L


class EpochTimer(L.Callback):
    """Prints `EPOCH_SECONDS [...]` at the end of fit: the wall time of each epoch, one float each.

    An epoch is measured from its `on_train_epoch_start` to the next one's (the last to `on_train_end`),
    so it holds everything the epoch costs: training steps, validation, checkpoints and other callbacks.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ends = [*self.starts[1:], time.perf_counter()]
        print("EPOCH_SECONDS", json.dumps([end - start for start, end in zip(self.starts, ends, strict=True)]))


class PeakMemory(L.Callback):
    """Prints `PEAK_RSS rank bytes` at the end of fit on every rank: the process's own peak resident memory."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import os
        import resource
        import sys

        kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib
        sys.stdout.flush()
        os.write(1, f"PEAK_RSS {trainer.global_rank} {peak}\n".encode())  # one write: ranks share the stream
