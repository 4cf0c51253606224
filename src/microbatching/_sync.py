"""MicroBatching: the engine on a private event-loop thread, for threaded code."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread
import logging
import threading
import weakref
from concurrent.futures import Future
from time import monotonic as _monotonic  # a module global: the fastest lookup per submit
from types import TracebackType
from typing import Any

from ._base import BatcherBase, State
from ._job import Job, JobResult
from ._stats import Stats

__all__ = ["MicroBatching"]

logger = logging.getLogger("microbatching")


class MicroBatching(BatcherBase):
    """Batches jobs submitted from ordinary (threaded) code.

    The engine runs on an event loop in a background thread, started by ``start()``,
    by the first ``submit_job`` or by ``with``.  ``submit_job`` may be called from any
    thread and returns a :class:`JobResult` (a :class:`concurrent.futures.Future`).
    Sync processors run in worker threads; ``async def`` processors on the loop.
    Event handlers run on the loop thread: keep them quick.  If the program exits
    without ``shutdown()``, an exit hook drains the batcher so no accepted job is lost.
    """

    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _room: _Room | None = None

    def start(self) -> None:
        """Start the loop thread (idempotent; a shut-down batcher cannot be restarted)."""
        with _lifecycle_lock:
            if self._state is State.RUNNING:
                return
            self._refuse_if_closed()
            if self.options.max_pending is not None:
                room = self._room = _Room(self.options.max_pending)
                self._engine.on_final = room.give_back
                self._engine.on_counted = room.count
            self._shutdown_lock = threading.Lock()
            ready: Future[None] = Future()
            self._thread = threading.Thread(
                target=self._run_loop, args=(ready,), name="microbatching-loop", daemon=True
            )
            self._thread.start()
            ready.result()
            self._state = State.RUNNING
            self._update_guard()
            _exit_hooks.add(self)

    def _run_loop(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._engine.bind(loop)
            self._engine._adapter.start()
        except BaseException as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit_job(self, job: Job[Any], block: bool = True, timeout: float | None = None) -> JobResult:
        """Accept ``job`` and return its :class:`JobResult`; thread-safe.

        At ``max_pending`` it waits for room (up to ``timeout`` seconds), or with
        ``block=False`` raises :class:`QueueFullError` at once.
        """
        try:
            handle = job._handle
        except AttributeError:
            raise TypeError(f"submit a Job, e.g. Job(data=...); got {type(job).__name__}") from None
        if handle is not None and not handle.done():
            raise ValueError(f"{job!r} is already submitted and not finished")
        if self._guarded:
            self._check_admission(job, block, timeout)
        handle = JobResult(job)
        job._handle = handle
        job._submitted_at = job._ready_at = _monotonic()
        self._engine.admit_threadsafe(job)
        return handle

    def _check_admission(self, job: Job[Any], block: bool, timeout: float | None) -> None:
        """The checks a plain running batcher can skip: lifecycle, encoding, ``max_pending``."""
        if self._state is not State.RUNNING:
            self._refuse_if_closed()
            self.start()
        if self._prepare is not None:
            self._prepare(job)
        if self._room is not None and not self._room.take(block, timeout):
            self._refuse_if_closed()  # woken by shutdown
            raise self._queue_full(timeout if block else None)

    def shutdown(self, timeout: float | None = None, *, cancel: bool = False) -> None:
        """Stop admission, flush the open batch at once, wait for every accepted job, stop the thread.

        With ``timeout``, jobs unfinished after that many seconds are abandoned; with
        ``cancel=True`` at once.  Abandoned jobs fail with ``JobCancelledError``.
        Idempotent; must not be called from an event handler (it runs on the loop thread).
        """
        with _lifecycle_lock:
            if self._state is State.NEW:
                self._state = State.CLOSED
                return
        if threading.current_thread() is self._thread or self._engine.is_processing_here():
            raise RuntimeError(
                "shutdown() cannot be called from an event handler or the processor: it would wait "
                "for itself (call it from another thread, after the batch returns)"
            )
        with self._shutdown_lock:  # a second caller waits here until the first is done
            if self._state is State.CLOSED:
                return
            self._state = State.CLOSING
            self._update_guard()
            if self._room is not None:
                self._room.close()  # blocked submitters wake up and see the shutdown
            drained = asyncio.run_coroutine_threadsafe(self._engine.drain(timeout, cancel), self._loop)
            drained.result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._engine._reject_leftovers()  # submits that raced the loop's stop
            self._state = State.CLOSED
            _exit_hooks.discard(self)

    def stats(self) -> Stats:
        """A consistent snapshot of the counters, taken on the loop thread."""
        if (
            self._state is State.NEW
            or not self._thread.is_alive()
            or threading.current_thread() is self._thread
        ):
            return self._engine_stats()
        snapshot: Future[Stats] = Future()
        try:
            self._loop.call_soon_threadsafe(lambda: snapshot.set_result(self._engine_stats()))
        except RuntimeError:  # the loop closed meanwhile: nothing moves any more
            return self._engine_stats()
        while self._thread.is_alive():  # the loop may stop before it runs the callback
            try:
                return snapshot.result(timeout=0.05)
            except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before 3.11
                continue
        return self._engine_stats()

    def __enter__(self) -> MicroBatching:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


_lifecycle_lock = threading.RLock()
_exit_hooks: weakref.WeakSet[MicroBatching] = weakref.WeakSet()


class _Room:
    """``max_pending`` across threads: jobs counted in at submit (or delivery), out when final."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._closed = False
        self._changed = threading.Condition(threading.Lock())

    def take(self, block: bool, timeout: float | None) -> bool:
        """Count one job in; False if there is no room (in time) or the batcher closed."""
        with self._changed:
            if self._used >= self._limit and block:
                self._changed.wait_for(lambda: self._used < self._limit or self._closed, timeout)
            if self._used >= self._limit or self._closed:
                return False
            self._used += 1
            return True

    def count(self, jobs: int) -> None:
        """Jobs that arrived without a submit (delivered by a queue) count too."""
        with self._changed:
            self._used += jobs

    def give_back(self, jobs: int) -> None:
        with self._changed:
            self._used -= jobs
            self._changed.notify(jobs)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def _drain_at_exit() -> None:
    for batcher in list(_exit_hooks):
        try:
            batcher.shutdown()
        except Exception:  # one batcher's failure must not leave the others undrained
            logger.exception("draining %r at exit failed", batcher)


# Run before concurrent.futures' own exit hook stops the processor threads (it is the
# hook ThreadPoolExecutor registers; later registrations run first).
_register = getattr(threading, "_register_atexit", atexit.register)
_register(_drain_at_exit)
