"""How answers travel from LitServe's inference workers back to its HTTP server: a ZeroMQ pipe per HTTP server.

LitServe 0.2.19 carries every answer through a queue held by its queue-manager process: the worker's `put` is a
round trip to that process, and the HTTP server waits for each answer in a thread of its own, another round trip,
then a hop back to its event loop. On the HTTP server, the busiest process of a small model's server, that was
about a third of its CPU per request. LitServe's own `fast_queue=True` means to send answers over ZeroMQ instead,
but in 0.2.19 the flag is dropped before it takes effect and its transport would deliver nothing if it were not
(Lightning-AI/LitServe#751; the fix, #752, is not released).

`ZMQAnswers` is that transport, made simple. Each HTTP server binds a PULL socket of its own, an IPC path in a
temporary folder of this server's that only its user may enter (an answer is a pickle). A worker connects a PUSH
socket to the HTTP server an answer is for, and sends it, pickled. PUSH to PULL is a pipe, not a broadcast: a
message sent before the other end is up waits in the sender's queue rather than being dropped (PUB/SUB's "slow
joiner"), and a full queue (1,000 answers unread) makes the worker wait rather than lose one. Requests still reach
the workers through LitServe's queue manager.

`AnswersOverZMQ` is the `LitServer` that installs it. It overrides `_init_manager`, a private method of LitServe's,
and subclasses `litserve.transport.base.MessageTransport`; this module checks at import that both are there, and
raises ImportError otherwise (serve.py then serves through LitServe's own queues, and says so in one line). The
serving tests run every request through this path. Once a LitServe release honours `fast_queue=True`, passing that
flag replaces this module.
"""

from __future__ import annotations

import asyncio
import atexit
import pickle
import shutil
import tempfile
from queue import Empty
from typing import Any

import litserve as ls
import zmq
import zmq.asyncio

try:
    from litserve.transport.base import MessageTransport
except ImportError:  # moved or gone in another release: refused below, in the same words
    MessageTransport = None
if MessageTransport is None or not callable(getattr(ls.LitServer, "_init_manager", None)):  # the private hooks
    raise ImportError(
        f"litserve {ls.__version__} has no LitServer._init_manager or litserve.transport.base, which"
        " lit_linreg.deploy.answers builds on (litserve 0.2.19 has both, see constraints.txt)"
    )


IPC_PATH_MAX = 100  # bytes: a Unix socket's path holds 107 on Linux, 103 on macOS


def answers_folder() -> str:
    """A new folder for the IPC paths, readable by this user only, removed when this process exits; under /tmp
    where the temporary folder's path is too long for a socket's."""
    folder = tempfile.mkdtemp(prefix="lit-linreg-answers-")
    if len(folder) + len("/answers-999.ipc") > IPC_PATH_MAX:
        shutil.rmtree(folder)
        folder = tempfile.mkdtemp(prefix="lit-linreg-answers-", dir="/tmp")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the processes LitServe forks end by os._exit
    return folder


class ZMQAnswers(MessageTransport):
    """Answers to HTTP server `consumer_id` over a PUSH -> PULL ZeroMQ pipe (see above).

    Picklable: LitServe hands it to each worker, and each process opens its own sockets when it first sends or
    receives.

    Args:
        folder: The folder of the IPC paths, one per HTTP server (`answers-<id>.ipc`).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._context: zmq.Context | None = None
        self._pushes: dict[int, zmq.Socket] = {}
        self._pull: zmq.asyncio.Socket | None = None

    def address(self, consumer_id: int) -> str:
        return f"ipc://{self.folder}/answers-{consumer_id}.ipc"

    def send(self, item: Any, consumer_id: int) -> None:
        """In a worker: the answer `item` to HTTP server `consumer_id`."""
        push = self._pushes.get(consumer_id)
        if push is None:
            self._context = self._context or zmq.Context()
            push = self._pushes[consumer_id] = self._context.socket(zmq.PUSH)
            push.connect(self.address(consumer_id))
        push.send(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        """In HTTP server `consumer_id`: the next answer for it, as `send` was given it; `queue.Empty` if none
        came within `timeout` seconds (None: wait for one)."""
        if self._pull is None:
            self._context = zmq.asyncio.Context()
            self._pull = self._context.socket(zmq.PULL)
            self._pull.bind(self.address(consumer_id))
        try:
            return pickle.loads(await asyncio.wait_for(self._pull.recv(), timeout))
        except TimeoutError:
            raise Empty from None

    def close(self, **kwargs: Any) -> None:
        """Close this process's sockets (the server's own process has none)."""
        for socket in [*self._pushes.values(), *([self._pull] if self._pull is not None else [])]:
            socket.close(linger=0)
        self._pushes, self._pull = {}, None

    def __reduce__(self) -> tuple:
        return ZMQAnswers, (self.folder,)


class AnswersOverZMQ(ls.LitServer):
    """A `LitServer` whose workers answer its HTTP servers through `ZMQAnswers` (see above)."""

    def _init_manager(self, num_api_servers: int) -> Any:
        manager = super()._init_manager(num_api_servers)  # the queue manager, which still carries the requests
        self._transport = ZMQAnswers(answers_folder())
        return manager
