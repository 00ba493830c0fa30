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
    """Prints `PEAK_RSS rank bytes` at the end of fit (or predict) on every rank: the process's own peak resident
    memory."""

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import os
        import resource
        import sys

        kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib
        sys.stdout.flush()
        os.write(1, f"PEAK_RSS {trainer.global_rank} {peak}\n".encode())  # one write: ranks share the stream


class InterleavedBare(L.Callback):
    """Lightning's floor measured in the fit's own process: one epoch of `bare_lightning.py`'s module between
    each two of the fit's epochs, on the fit's own training tensors, in the fit's batches.

    Prints `EPOCH_SECONDS [...]` (each of the fit's epochs, from its start to the next one's as `EpochTimer`
    times them, less the bare epoch run between) and `BARE_SECONDS [...]` (each bare epoch, from its start to
    the end of its Trainer's fit). On a shared machine whose speed changes from second to second, epochs that
    alternate meet the same spells, so their ratio is steadier than that of two processes run one after the other.
    """

    def __init__(self) -> None:
        self.fit_seconds: list[float] = []
        self.bare_seconds: list[float] = []
        self.start: float | None = None
        self.bare = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.start is not None:
            self.fit_seconds.append(time.perf_counter() - self.start)
        self.bare_seconds.append(self._bare_epoch(trainer))
        self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds.append(time.perf_counter() - self.start)
        print("EPOCH_SECONDS", json.dumps(self.fit_seconds))
        print("BARE_SECONDS", json.dumps(self.bare_seconds))

    def _bare_epoch(self, trainer: L.Trainer) -> float:
        from bare_module import Linear, bare_trainer

        from lit_linreg.data.loader import TensorLoader

        x, y = trainer.datamodule.splits["train"]
        warm_up = self.bare is None  # the process's first training epoch is slower, whichever module it trains
        if warm_up:
            self.bare = Linear(x.shape[1])
        for _ in range(2 if warm_up else 1):
            loader = TensorLoader(x, y, batch_size=trainer.datamodule.batch_size, shuffle=True)
            timer = _Start()
            bare_trainer(1, timer).fit(self.bare, loader)
        return time.perf_counter() - timer.start


class _Start(L.Callback):
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()
