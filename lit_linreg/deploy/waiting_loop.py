"""LitServe's batched loop, waiting for the first request of a batch instead of polling for it.

With `batch_timeout` 0, LitServe's `BatchedLoop` asks its request queue for work without waiting (`get_nowait`), and
asks again at once when there is none. The queue lives in LitServe's queue-manager process, so each ask is a round
trip to it: an idle server keeps its inference worker and the queue manager busy, about 1.1 CPU cores between them
(a bare LitServe API measures the same; see docs/serve-and-export.md). In a container with a CPU limit, that is
the limit spent on nothing.

`WaitingBatchedLoop` waits, up to a second at a time, for the first request of each batch, then takes every request
already waiting, up to `max_batch_size`, without waiting for more: what `batch_timeout` 0 means. With a positive
`batch_timeout` LitServe's own loop already waits (for the batch to fill), and runs unchanged.

It overrides `get_batch_requests`, the hook LitServe's loops fetch a batch through, and hands LitServe's own
`collate_requests` a view of the queue whose first read waits. Should a LitServe release fetch differently, the
loop still serves correctly, only polling again: `tests/deploy/test_serve.py` measures an idle server's CPU.
"""

from __future__ import annotations

from queue import Queue
from typing import Any

import litserve as ls

WAIT_S = 1.0  # the longest one wait for a request lasts; the loop then asks again


class _FirstReadWaits:
    """A request queue whose first `get_nowait` waits up to WAIT_S for a request (raising `queue.Empty` after)."""

    def __init__(self, queue: Queue) -> None:
        self.queue, self.waited = queue, False

    def get_nowait(self) -> Any:
        if self.waited:
            return self.queue.get_nowait()
        self.waited = True
        return self.queue.get(timeout=WAIT_S)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self.queue.get(*args, **kwargs)


class WaitingBatchedLoop(ls.loops.BatchedLoop):
    """LitServe's batched loop, which waits for a batch's first request when `batch_timeout` is 0 (see above)."""

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Queue, transport: Any) -> tuple[list, list]:
        if lit_api.batch_timeout == 0:
            request_queue = _FirstReadWaits(request_queue)
        return super().get_batch_requests(lit_api, request_queue, transport)
