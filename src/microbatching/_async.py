"""AsyncMicroBatching: the engine on the caller's event loop."""

from __future__ import annotations

import asyncio
import functools
import warnings
from asyncio.events import _get_running_loop  # the C accessor: no Python frame per submit
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from ._base import BatcherBase, State
from ._engine.items import Many, many_future_done
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
    A batcher belongs to the event loop it started on, and is called from that loop's
    thread only (from other threads, use :class:`~microbatching.MicroBatching`).
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _sentinel: Any = None

    def start(self) -> None:
        """Bind to the running event loop and begin (idempotent; submits start it too)."""
        if self._state is State.RUNNING:
            self._check_loop()
            return
        self._refuse_if_closed()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._create_future = _future_factory(loop)
        self._engine.bind(loop)
        self._engine.reraise_interrupts = self._engine.runner.is_async
        self._now = self._engine.now
        self._buffer.off_loop = self._check_loop
        self._watch_loop_end(loop)
        self._state = State.RUNNING
        # Only a bounded or encoding batcher needs checks on every submit.
        self._update_guard()

    # ``deadline`` is not keyword-only: a call to a function with keyword-only parameters is not
    # specialized by CPython, which costs every submit about 300 instructions.
    def submit_job_nowait(self, job: Job[Any], deadline: float | None = None) -> asyncio.Future[Any]:
        """Accept ``job`` and return its future; raises ``QueueFullError`` at ``max_pending``.

        ``deadline`` is seconds from now by which the job should have its result: if its batch
        has not started by then, it fails with ``DeadlineExceededError`` and never runs.  With
        ``shed=True`` a job predicted to miss ``latency_target`` is refused with ``OverloadedError``.
        """
        try:
            handle = job._handle
        except AttributeError:
            raise self._not_a_job(job) from None
        if handle is not None:
            job = self._resubmitted(job, handle)
        if self._guarded or deadline is not None:
            return self._submit_checked(job, deadline)
        # _enter(job), written out: this runs for every submit.
        future = self._create_future()
        job._handle = future
        job._submitted_at = job._ready_at = self._now()
        self._buffer.admit(job)
        return future

    def _submit_checked(self, job: Job[Any], deadline: float | None) -> asyncio.Future[Any]:
        """``submit_job_nowait`` with the checks a plain running batcher skips, and the deadline."""
        if deadline is not None:
            self._check_loop()
            due = self._expect_deadline(deadline, self._engine.now())
        if self._guarded:
            self._admit(job)
            if not self._pending.has_room():
                raise self._queue_full()
        if deadline is not None:  # only once admitted: a refused job keeps none
            job._deadline = due
        return self._enter(job)

    def submit_nowait(self, item: Any, deadline: float | None = None) -> asyncio.Future[Any]:
        """Accept one item (no ``Job`` needed) and return its future: the fastest submit.

        The processor gets the item as a job's data (or the item itself, with
        ``takes="items"``); a Job is made for it only where one is needed.  Raises
        ``QueueFullError`` at ``max_pending``; ``deadline`` as for ``submit_job_nowait``.
        """
        if self._guarded or deadline is not None:
            return self.submit_job_nowait(Job(None, item), deadline=deadline)
        future = self._create_future()  # the loop is checked where a batch opens or fills
        self._buffer.admit_item(item, future)
        return future

    async def submit(
        self, item: Any, timeout: float | None = None, *, deadline: float | None = None
    ) -> asyncio.Future[Any]:
        """Wait (up to ``timeout`` seconds) for room under ``max_pending``, then ``submit_nowait(item)``.

        ``deadline`` counts from the call, waiting for room included.
        """
        if self._guarded or deadline is not None:
            return await self.submit_job(Job(None, item), timeout, deadline=deadline)
        return self.submit_nowait(item)

    async def submit_many(self, items: Iterable[Any], timeout: float | None = None) -> list[Any]:
        """Submit many items at once; returns their results, in order, once all are final.

        The way to push many items: one call, one awaitable, batches of ``batch_size`` that
        leave at once.  An item that failed has its exception in its slot (as
        ``asyncio.gather(..., return_exceptions=True)`` gives it); the others are not held
        back by it.  Waits for room under ``max_pending``, item by item.
        """
        values = list(items)
        if not values:
            return []
        if self._guarded or self._buffer.announce is not None:  # each item must pass as a Job
            futures = [await self.submit(value, timeout) for value in values]
            return list(await asyncio.gather(*futures, return_exceptions=True))
        if _get_running_loop() is not self._loop:
            self._check_loop()
        done = self._create_future()
        self._buffer.add_many(values, Many(len(values), many_future_done(done)))
        results: list[Any] = await done
        return results

    async def submit_job(
        self,
        job: Job[Any],
        timeout: float | None = None,
        *,
        wait_stored: bool = False,
        deadline: float | None = None,
    ) -> asyncio.Future[Any]:
        """Wait (up to ``timeout`` seconds) for room under ``max_pending``, then submit ``job``.

        On a durable queue it also waits while the queue's ``max_unstored`` accepted jobs are
        not yet stored; with ``wait_stored=True`` it returns once the queue has stored the job.
        ``deadline`` as for ``submit_job_nowait``, counted from this call (waiting for room
        included).
        """
        try:
            handle = job._handle
        except AttributeError:
            raise self._not_a_job(job) from None
        if handle is not None:
            job = self._resubmitted(job, handle)
        self._check_loop()
        if deadline is not None:
            due = self._expect_deadline(deadline, self._engine.now())
        self._admit(job)
        if not self._adapter.has_store_room():
            await self._adapter.store_room()
            self._refuse_if_closed()
        if not self._pending.has_room():
            if not await self._pending.wait_for_room(self._loop, timeout):  # type: ignore[arg-type]
                self._refuse_if_closed()  # woken by shutdown
                raise self._queue_full(timeout)
            self._refuse_if_closed()
        stored = self._adapter.watch_stored(job) if wait_stored else None
        if deadline is not None:  # only once admitted: a refused job keeps none
            job._deadline = due
        future = self._enter(job)
        if stored is not None:
            await asyncio.wrap_future(stored)
        return future

    def _admit(self, job: Job[Any]) -> None:
        """The lifecycle (and the loop), then the encoding: the checks before room."""
        if self._state is not State.RUNNING:
            self.start()
        elif _get_running_loop() is not self._loop:
            self._check_loop()
        self._encode(job)
        if self.options.shed:
            self._engine.shed_if_overloaded()

    def _enter(self, job: Job[Any]) -> asyncio.Future[Any]:
        future = self._create_future()
        job._handle = future
        job._submitted_at = job._ready_at = self._now()
        self._buffer.admit(job)
        return future

    def _watch_loop_end(self, loop: asyncio.AbstractEventLoop) -> None:
        """Say so if the event loop ends (``asyncio.run`` returns) before this batcher shut down.

        An async generator started here is closed by the loop's ``shutdown_asyncgens``, which
        ``asyncio.run`` (and most runners) call as the loop ends: no task, no cost per job.
        """

        async def sentinel() -> Any:
            try:
                yield
            finally:
                self._loop_ended()

        self._sentinel = sentinel()
        try:
            self._sentinel.asend(None).send(None)  # runs to the yield: the loop now tracks it
        except StopIteration:
            pass

    def _loop_ended(self) -> None:
        if self._state is not State.RUNNING:
            return
        unfinished = self._pending.count
        if unfinished:
            warnings.warn(
                f"the event loop ended with {unfinished} accepted jobs of {type(self).__name__} never "
                "finished: await mb.shutdown() before the loop ends (or use `async with`, or a web "
                "framework's lifespan)",
                RuntimeWarning,
                stacklevel=1,
            )

    def _check_loop(self) -> None:
        """Start on the running loop; refuse another thread or another loop, saying what to do."""
        running = _get_running_loop()
        if self._state is State.NEW and running is not None:
            self.start()
            return
        if running is self._loop:
            return
        if running is None:
            raise RuntimeError(
                f"{type(self).__name__} is called from a thread with no running event loop "
                f"(a thread pool, say); it belongs to its event loop's thread: from other threads "
                "use MicroBatching, which any thread may submit to"
            )
        if running is not self._loop:
            self._refuse_if_closed()
            raise RuntimeError(
                f"{type(self).__name__} was started on another event loop (one asyncio.run() per "
                "batcher): make a new batcher for this loop, e.g. inside the same asyncio.run() "
                "or a web framework's lifespan"
            )

    async def shutdown(self, timeout: float | None = None, *, cancel: bool = False) -> None:
        """Stop admission, flush the open batch at once and wait for every accepted job.

        With ``timeout``, jobs unfinished after that many seconds are abandoned; with
        ``cancel=True`` they are abandoned at once (running async processors are
        cancelled).  Abandoned jobs fail with ``JobCancelledError``.  Idempotent; a second
        call with a timeout or ``cancel=True`` ends a graceful shutdown that is stuck.
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
            self._pending.close()  # blocked submitters learn of the shutdown
        await self._engine.drain(timeout, cancel)
        self._state = State.CLOSED
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            await sentinel.aclose()

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
