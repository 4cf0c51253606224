"""A private event loop on a thread, so synchronous code can call a queue's async operations."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ._base import ClaimQueue

__all__ = ["Portal"]

T = TypeVar("T")

_portals: weakref.WeakSet[Portal] = weakref.WeakSet()


class Portal:
    """Runs calls on ``queue`` (a handle of its own) on a loop thread; ``call`` blocks for the result.

    Any number of threads may call at once; their calls run concurrently on the loop.
    """

    def __init__(self, queue: ClaimQueue) -> None:
        self._queue = queue
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        _portals.add(self)

    def call(self, operation: Callable[[ClaimQueue], Awaitable[T]]) -> T:
        """Run ``operation(queue)`` on the portal's loop and return its result."""
        loop = self._started()

        async def run() -> T:
            return await operation(self._queue)

        return asyncio.run_coroutine_threadsafe(run(), loop).result()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(ready,), name="microbatching-queue-portal", daemon=True
                )
                self._thread.start()
                ready.wait()
            loop = self._loop
        if loop is None:  # closed by another thread meanwhile
            raise RuntimeError("the queue was closed")
        return loop

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def close(self) -> None:
        """Close the queue handle and stop the thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._queue.close(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)

    def _forget_after_fork(self) -> None:
        # The thread does not exist in a forked child: start afresh there, on a new handle.
        self._loop = self._thread = None
        self._lock = threading.Lock()
        self._queue = self._queue._clone()


def _after_fork_in_child() -> None:
    for portal in list(_portals):
        portal._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
