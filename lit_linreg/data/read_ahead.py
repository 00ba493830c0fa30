"""A producer run in a background thread, read from as an iterator: how a stream reads ahead of training (stream.py).

It holds at most a given number of items at once, so a producer that fills that many buffers in turn never refills
one in use; an error in the thread is raised in the consumer's.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any


class ReadAhead:
    """Runs `produce()` in a background thread; an iterator here, re-raising its errors.

    At most `held` items exist at once: the one the consumer took last, which is in use until it takes the
    next, and those made after it. So a producer that fills `held` buffers in turn never refills one in use.
    Items in `free_items` (markers) hold no buffer: they are not counted, and taking one lets the last go.
    `close()` (also on garbage collection of an abandoned epoch) stops the thread and waits for it.
    """

    _DONE = object()
    _LIVE: weakref.WeakSet[ReadAhead] = weakref.WeakSet()  # stopped at exit (see `_stop_all`)

    def __init__(self, produce: Callable[[], Iterator[Any]], held: int, free_items: tuple = ()) -> None:
        self.produce, self.free_items = produce, free_items
        self.queue: queue.Queue = queue.Queue()  # bounded by `free`
        self.free = threading.Semaphore(max(1, held))  # items that may still be made
        self.taken = False  # whether the consumer holds an item
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lit-linreg-read-ahead", daemon=True)
        self._LIVE.add(self)
        self.thread.start()

    @classmethod
    def _stop_all(cls) -> None:
        """At exit: a reader still running (the next epoch's, read ahead after the last) is stopped and waited
        for, as the interpreter would otherwise kill its thread inside pyarrow or torch, which aborts the process."""
        for reader in list(cls._LIVE):
            reader.close()

    def _run(self) -> None:
        items = self.produce()
        try:
            while True:
                while not self.free.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                if self.stop.is_set():
                    return
                try:
                    item = next(items)
                except StopIteration:
                    break
                if any(item is free for free in self.free_items):
                    self.free.release()
                self.queue.put(item)
        except BaseException as err:  # handed to the consumer, which raises it as its own
            self.queue.put(err)
            return
        finally:
            items.close()  # here, in this thread: what the producer holds is let go before `close()` returns
        self.queue.put(self._DONE)

    def __iter__(self) -> ReadAhead:
        return self

    def __next__(self) -> Any:
        item = self.queue.get()
        if item is self._DONE:
            self.queue.put(item)  # asked again, it stays done
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        if self.taken:  # the item taken before this one is let go: the producer may make one more
            self.free.release()
        self.taken = not any(item is free for free in self.free_items)
        return item

    def close(self) -> None:
        self.stop.set()
        self.free.release()  # a reader waiting for a buffer wakes to stop now
        self.thread.join()

    def __del__(self) -> None:
        self.stop.set()
        self.free.release()


atexit.register(ReadAhead._stop_all)
