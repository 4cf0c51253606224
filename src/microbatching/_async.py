"""AsyncMicroBatching: the engine on the caller's event loop."""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._base import BatcherBase, State
from ._job import Job
from ._stats import Stats

__all__ = ["AsyncMicroBatching"]


def _future_factory(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Future[Any]]:
    """``loop.create_future``, minus its Python frame when the loop is a stock asyncio loop."""
    if type(loop).create_future is asyncio.BaseEventLoop.create_future:
        return functools.partial(asyncio.Future, loop=loop)
    return loop.create_future


class AsyncMicroBatching(BatcherBase):
    """Batches jobs submitted from asyncio code; the processor may be sync or ``async def``.

    ``fut = mb.submit_job_nowait(job)`` returns the job's :class:`asyncio.Future` at once;
    ``fut = await mb.submit_job(job)`` first waits for room under ``max_pending``.
    ``await fut`` gives the job's result or raises its error.  ``async with`` starts the
    batcher and shuts it down gracefully; so do ``start()`` and ``await shutdown()``.
    """

    _loop: asyncio.AbstractEventLoop
    _room_waiters: deque[asyncio.Future[None]]

    def start(self) -> None:
        """Bind to the running event loop and begin (idempotent; submits start it too)."""
        if self._state is State.RUNNING:
            return
        self._refuse_if_closed()
        self._loop = asyncio.get_running_loop()
        self._create_future = _future_factory(self._loop)
        self._room_waiters = deque()
        if self.options.max_pending is not None:
            self._engine.on_final = self._room_freed
        self._engine.bind(self._loop)
        self._engine.reraise_interrupts = self._engine._is_async
        self._now = self._engine.now
        self._state = State.RUNNING
        # Only a bounded or encoding batcher needs checks on every submit.
        self._update_guard()
        self._engine._adapter.start()

    def submit_job_nowait(self, job: Job[Any]) -> asyncio.Future[Any]:
        """Accept ``job`` and return its future; raises ``QueueFullError`` at ``max_pending``."""
        try:
            handle = job._handle
        except AttributeError:
            raise TypeError(f"submit a Job, e.g. Job(data=...); got {type(job).__name__}") from None
        if handle is not None and not handle.done():
            raise ValueError(f"{job!r} is already submitted and not finished")
        if self._guarded:
            self._check_admission(job)
        future = self._create_future()
        job._handle = future
        job._submitted_at = job._ready_at = self._now()
        self._engine.admit(job)
        return future

    def _check_admission(self, job: Job[Any]) -> None:
        """The checks a plain running batcher can skip: lifecycle, ``max_pending``, encoding."""
        if self._state is not State.RUNNING:
            self.start()
        if self._engine.pending >= self._limit:
            raise self._queue_full()
        if self._prepare is not None:
            self._prepare(job)

    async def submit_job(self, job: Job[Any], timeout: float | None = None) -> asyncio.Future[Any]:
        """Wait (up to ``timeout`` seconds) for room under ``max_pending``, then submit ``job``."""
        if self._state is not State.RUNNING:
            self.start()
        if self._engine.pending >= self._limit:
            await self._wait_for_room(timeout)
        return self.submit_job_nowait(job)

    async def _wait_for_room(self, timeout: float | None) -> None:
        deadline = None if timeout is None else self._loop.time() + timeout
        while self._engine.pending >= self._limit:
            self._refuse_if_closed()
            waiter = self._loop.create_future()
            self._room_waiters.append(waiter)
            remaining = None if deadline is None else max(0.0, deadline - self._loop.time())
            try:
                await asyncio.wait_for(waiter, remaining)
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._room_freed(1)  # we were woken but leave: hand the wake-up on
                if isinstance(exc, asyncio.TimeoutError):
                    raise self._queue_full(timeout) from None
                raise
            finally:
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)

    def _room_freed(self, count: int) -> None:
        waiters = self._room_waiters
        while count > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    async def shutdown(self, timeout: float | None = None, *, cancel: bool = False) -> None:
        """Stop admission, flush the open batch at once and wait for every accepted job.

        With ``timeout``, jobs unfinished after that many seconds are abandoned; with
        ``cancel=True`` they are abandoned at once (running async processors are
        cancelled).  Abandoned jobs fail with ``JobCancelledError``.  Idempotent.
        """
        if self._state is State.NEW:
            self._state = State.CLOSED
            return
        if self._engine.is_processing_here():
            raise RuntimeError(
                "shutdown() cannot be awaited inside the processor: it would wait for its own batch"
            )
        if self._state is State.RUNNING:
            self._state = State.CLOSING
            self._update_guard()
            for waiter in self._room_waiters:  # blocked submitters learn of the shutdown
                if not waiter.done():
                    waiter.set_result(None)
        await self._engine.drain(timeout, cancel)
        self._state = State.CLOSED

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        return self._engine_stats()

    async def __aenter__(self) -> AsyncMicroBatching:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()
