"""The threads sync processors run on: daemon threads, all started up front.

Daemon, so a processor stuck past ``batch_timeout`` or a shutdown timeout never keeps the
interpreter from exiting (a worker's drain timeout must end the process).  All started
when the engine starts: Python 3.12 refuses to start a thread at interpreter exit, when
the exit hook may still be draining the batcher.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ProcessorThreads"]

_STOP: Any = object()


class ProcessorThreads:
    """A fixed set of daemon threads running calls whose outcomes land in an event loop's futures.

    The outcome goes straight to the loop's future by one ``call_soon_threadsafe``: no
    ``concurrent.futures.Future`` (a condition of its own) and no ``wrap_future`` chain in between.
    """

    def __init__(self, count: int, name: str) -> None:
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def run(
        self, loop: asyncio.AbstractEventLoop, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        """``func(*args)`` on one of the threads; returns the future (of ``loop``) of its outcome.

        Cancelling the future before a thread takes the call skips it.
        """
        future = loop.create_future()
        self._work.put((loop, future, func, args))
        return future

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is _STOP:
                return
            loop, future, func, args = item
            if future.cancelled():  # a read only: the loop's thread alone changes the future
                continue
            try:
                outcome, error = func(*args), None
            except BaseException as exc:  # delivered to the awaiting batch, never lost in this thread
                outcome, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, outcome, error)
            except RuntimeError:  # the loop is closed: nobody waits for this outcome any more
                pass

    def shutdown(self) -> None:
        """Let every thread end once it is idle (a stuck one is left to the interpreter's exit)."""
        for _ in self._threads:
            self._work.put(_STOP)


def _settle(future: asyncio.Future[Any], outcome: Any, error: BaseException | None) -> None:
    """On the loop's thread: the outcome into the future, unless it was cancelled meanwhile."""
    if future.cancelled():
        return
    if error is None:
        future.set_result(outcome)
    else:
        future.set_exception(error)
