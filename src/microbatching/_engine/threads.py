"""The threads sync processors run on: daemon threads, all started up front.

Daemon, so a processor stuck past ``batch_timeout`` or a shutdown timeout never keeps the
interpreter from exiting (a worker's drain timeout must end the process).  All started
when the engine starts: Python 3.12 refuses to start a thread at interpreter exit, when
the exit hook may still be draining the batcher.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ProcessorThreads"]

_STOP: Any = object()


class ProcessorThreads:
    """A fixed set of daemon threads running submitted calls, each returning a Future."""

    def __init__(self, count: int, name: str) -> None:
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, func: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._work.put((future, func, args))
        return future

    def _serve(self) -> None:
        while True:
            item = self._work.get()
            if item is _STOP:
                return
            future, func, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func(*args))
            except BaseException as exc:  # delivered to the awaiting batch, never lost in this thread
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Let every thread end once it is idle (a stuck one is left to the interpreter's exit)."""
        for _ in self._threads:
            self._work.put(_STOP)
