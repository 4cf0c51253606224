"""MicroBatching: the engine on a private event-loop thread, for threaded code."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401  (import its exit hook before registering ours)
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
    _slots: threading.Semaphore | None = None

    def start(self) -> None:
        """Start the loop thread (idempotent; a shut-down batcher cannot be restarted)."""
        with _lifecycle_lock:
            if self._state is State.RUNNING:
                return
            self._refuse_if_closed()
            if self.options.max_pending is not None:
                slots = threading.Semaphore(self.options.max_pending)
                self._slots = slots
                self._engine.on_final = lambda count: slots.release(count)
            ready: Future[None] = Future()
            self._thread = threading.Thread(
                target=self._run_loop, args=(ready,), name="microbatching-loop", daemon=True
            )
            self._thread.start()
            ready.result()
            self._admit_threadsafe = self._engine.admit_threadsafe
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
        self._admit_threadsafe(job)
        return handle

    def _check_admission(self, job: Job[Any], block: bool, timeout: float | None) -> None:
        """The checks a plain running batcher can skip: lifecycle, encoding, ``max_pending``."""
        if self._state is not State.RUNNING:
            self._refuse_if_closed()
            self.start()
        if self._prepare is not None:
            self._prepare(job)
        slots = self._slots
        if slots is None:
            return
        if not slots.acquire(block, timeout):
            raise self._queue_full(timeout if block else None)
        if self._state is not State.RUNNING:  # woken by shutdown
            slots.release()
            self._refuse_if_closed()

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
            if self._state is State.RUNNING:
                self._state = State.CLOSING
                self._update_guard()
        if threading.current_thread() is self._thread:
            raise RuntimeError("shutdown() cannot be called from the batcher's own loop thread")
        if self._slots is not None:  # wake blocked submitters: they then see the shutdown
            self._slots.release(self.options.max_pending or 0)
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._engine.drain(timeout, cancel), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
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
        self._loop.call_soon_threadsafe(lambda: snapshot.set_result(self._engine_stats()))
        return snapshot.result()

    def __enter__(self) -> MicroBatching:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


_lifecycle_lock = threading.RLock()
_exit_hooks: weakref.WeakSet[MicroBatching] = weakref.WeakSet()


def _drain_at_exit() -> None:
    for batcher in list(_exit_hooks):
        batcher.shutdown()


# Run before concurrent.futures' own exit hook stops the processor threads (it is the
# hook ThreadPoolExecutor registers; later registrations run first).
_register = getattr(threading, "_register_atexit", atexit.register)
_register(_drain_at_exit)
