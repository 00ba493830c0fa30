"""How the server stops: a signal runs LitServe's shutdown, the exit code and the line say which one came.

Stdlib only: the launcher (launch.py) installs these before it imports LitServe.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator


def stopped(stopped_by: list[int]) -> int:
    """The exit code of a server stopped by the signals in `stopped_by` (none: 0), its line printed."""
    if not stopped_by:
        return 0
    what = "stopped by SIGTERM" if stopped_by == [signal.SIGTERM] else "interrupted"
    print(f"lit-linreg: error: {what}", file=sys.stderr)
    return 128 + stopped_by[0]


@contextlib.contextmanager
def stop_gracefully() -> Iterator[list[int]]:
    """Let SIGTERM, as Ctrl-C, run LitServe's shutdown, which ends its workers; yields the signal that came.

    Left to its default, SIGTERM (what a scheduler or `docker stop` sends) ended this process at once and left
    the inference and HTTP workers serving the port as orphans.
    """
    stopped_by: list[int] = []
    server_pid = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != server_pid:
            # A process LitServe forked, inheriting this handler: its queue manager, or an HTTP worker once
            # uvicorn has shut it down. The server's shutdown ends them in order; a manager killed first (by a
            # SIGTERM to the whole group, as systemd sends it) would fail the inference worker mid-read.
            return
        if not stopped_by:
            stopped_by.append(signum)
            raise KeyboardInterrupt  # LitServe's run catches it and shuts its workers down

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped_by
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def end_quietly_on_signals() -> None:
    """In the inference worker: leave Ctrl-C to the server, and end at once, without a traceback, on SIGTERM.

    Ctrl-C reaches every process of the terminal's group: the server's shutdown then ends this worker, by
    SIGTERM, and a worker gone before it would read as a crash. Exiting on SIGTERM at once spares the traceback
    of the request queue torn down under a worker still waiting on it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
