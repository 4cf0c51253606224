"""The pending count: accepted jobs not yet final, and the waits ``max_pending`` imposes.

One object owns it for both batchers.  A job counts from its admission (or its delivery,
for a job submitted elsewhere) until its final outcome, or until a durable queue takes it
back.  :class:`Pending` lives on the loop thread (``AsyncMicroBatching``, and
``MicroBatching`` without a bound); :class:`ThreadSafePending` also lets submitters on
other threads take room before their job reaches the loop.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque

__all__ = ["Pending", "ThreadSafePending"]


class Pending:
    """Accepted jobs not yet final (loop thread); async submitters wait here for room."""

    __slots__ = ("_idle", "_waiters", "closed", "count", "limit")

    def __init__(self, limit: int | None) -> None:
        #: Read and incremented inline on the hot path (``Buffer.admit``); changed only on the loop thread.
        self.count = 0
        self.limit: float = math.inf if limit is None else limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle: asyncio.Future[None] | None = None
        #: Set at shutdown: nobody gets room any more.
        self.closed = False

    def add(self, jobs: int = 1) -> None:
        """Jobs that count without a submit here (delivered by a queue from elsewhere)."""
        self.count += jobs

    def done(self, jobs: int = 1) -> None:
        """Jobs that stopped counting: final, or given back to a durable queue."""
        self.count -= jobs
        if self._waiters:
            self._wake(jobs)
        if self.count == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def give_back(self, jobs: int = 1) -> None:
        """Room taken for jobs that never reached admission (refused at shutdown)."""

    def has_room(self) -> bool:
        return self.count < self.limit

    async def wait_for_room(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> bool:
        """Wait until there is room (True), or ``timeout`` passes (False).

        A wake-up is a hint, not a reservation: the woken submitter checks again, and one
        that leaves without taking the room (timed out, cancelled) hands the wake-up on.
        """
        deadline = None if timeout is None else loop.time() + timeout
        while not self.has_room():
            if self.closed:
                return False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(waiter, left)
            except asyncio.TimeoutError:
                self._pass_on(waiter)
                return False
            except BaseException:
                self._pass_on(waiter)
                raise
        return True

    def _pass_on(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        elif waiter.done() and not waiter.cancelled():
            self._wake(1)  # woken, but leaving without the room: the next one may take it

    def _wake(self, jobs: int) -> None:
        waiters = self._waiters
        while jobs > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                jobs -= 1

    def close(self) -> None:
        """Shutdown: wake every waiting submitter; they see it and give up."""
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def idle(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> bool:
        """Wait until nothing is pending (True), or ``timeout`` passes (False)."""
        if self.count == 0:
            return True
        if self._idle is None or self._idle.done():
            self._idle = loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class ThreadSafePending(Pending):
    """``max_pending`` for submitters on any thread: each takes room before its job is sent on.

    ``count`` stays the loop thread's view; ``_used`` is the room taken, guarded by a
    condition that blocked submitters wait on.
    """

    __slots__ = ("_changed", "_used")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._used = 0
        self._changed = threading.Condition(threading.Lock())

    def take(self, block: bool, timeout: float | None) -> bool:
        """Take room for one job (any thread); False if there is none (in time) or the batcher closed."""
        with self._changed:
            if self._used >= self.limit and block and not self.closed:
                self._changed.wait_for(lambda: self._used < self.limit or self.closed, timeout)
            if self._used >= self.limit or self.closed:
                return False
            self._used += 1
            return True

    def add(self, jobs: int = 1) -> None:
        super().add(jobs)
        with self._changed:
            self._used += jobs

    def done(self, jobs: int = 1) -> None:
        super().done(jobs)
        self.give_back(jobs)

    def give_back(self, jobs: int = 1) -> None:
        with self._changed:
            self._used -= jobs
            self._changed.notify(jobs)

    def close(self) -> None:
        """Wake blocked submitters for good: the batcher is shutting down."""
        with self._changed:
            super().close()
            self._changed.notify_all()

    def reset_after_fork(self) -> None:
        """A forked child gets a fresh lock (the parent's may have been held at the fork)."""
        self._changed = threading.Condition(threading.Lock())
