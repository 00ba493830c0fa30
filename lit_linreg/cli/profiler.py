"""The Trainer's default profiler: Lightning's pass-through one, without a context manager made per call.

Lightning wraps every hook of every callback, each step, in `profiler.profile(name)`. The pass-through
profiler's `profile` is a `@contextmanager` generator, built and torn down each time: with the project's
callbacks that is about sixty per training step, a large share of a small model's step. This profiler
returns one shared no-op context instead. `--trainer.profiler simple` (or any other) still replaces it.
"""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = contextlib.nullcontext()


class LeanProfiler(PassThroughProfiler):
    """Profiles nothing, at no cost per call."""

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:  # noqa: ARG002
        return _NOTHING
