"""A run stopped by a signal ends in one line saying what it left behind, and 128 + the signal as exit code.

Lightning notes a SIGTERM only inside its loops and looks for it only between batches and epochs; these
close the gaps before and after, so a scheduler never takes a stopped job for a finished one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_linreg.cli.checkpoint import LastCheckpoint


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
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


def raise_if_signalled(trainer: Trainer | None) -> None:
    """Raise SIGTERMException for a SIGTERM that came after Lightning's last look for one.

    Lightning looks between batches and epochs only: a SIGTERM received in `on_train_end`, in the last batch of
    `validate` or `test`, or during `predict`, whose loop never looks, let the run exit 0, and a scheduler took a
    stopped job for a finished one.

    Args:
        trainer: The CLI's Trainer, or None if it built none.
    """
    if trainer is not None and trainer.received_sigterm:
        err = SIGTERMException()
        last = next((callback for callback in trainer.callbacks if isinstance(callback, LastCheckpoint)), None)
        err.stopped_in = trainer.state.fn, last.written() if last is not None else None
        raise err


def stopped(what: str, err: BaseException) -> str:
    """What a run stopped by a signal left behind, from what `LastCheckpoint.on_exception` noted on `err`."""
    stage, saved = getattr(err, "stopped_in", (None, None))
    if stage is None:  # before the Trainer started
        return what
    if stage != "fit":
        return f"{what} during {getattr(stage, 'value', stage)}: its output may be incomplete; run it again"
    if saved is None:
        return f"{what} before the first epoch ended: no checkpoint was written"
    return f"{what}; {saved} holds the last completed epoch: resume with --ckpt_path last"
