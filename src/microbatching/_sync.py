"""MicroBatching: the engine on a private event-loop thread, for threaded code."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.thread  # its exit hook must be registered before ours (see the end)
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from time import monotonic as _monotonic  # a module global: the fastest lookup per submit
from types import TracebackType
from typing import Any, TypeVar

from ._base import BatcherBase, State
from ._engine import Pending, ThreadSafePending
from ._engine.items import Many, many_future_done
from ._job import Job, JobResult, new_handle, reset_handles_after_fork
from ._stats import Stats

__all__ = ["MicroBatching"]

logger = logging.getLogger("microbatching")

T = TypeVar("T")


class MicroBatching(BatcherBase):
    """Batches jobs submitted from ordinary (threaded) code.

    The engine runs on an event loop in a background thread, started by ``start()``,
    by the first ``submit_job`` or by ``with``.  ``submit_job`` may be called from any
    thread and returns a :class:`JobResult` (a :class:`concurrent.futures.Future`).
    Sync processors run in worker threads; ``async def`` processors on the loop.
    Event handlers run on the loop thread: keep them quick.  If the program exits
    without ``shutdown()``, an exit hook drains the batcher so no accepted job is lost.
    A batcher does not survive ``os.fork()``: in the child, make a new one.
    """

    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _forked_from: int | None = None
    _drained: Future[None] | None = None

    def _make_pending(self, limit: int | None) -> Pending:
        return Pending(None) if limit is None else ThreadSafePending(limit)

    def start(self) -> None:
        """Start the loop thread (idempotent; a shut-down batcher cannot be restarted)."""
        with _lifecycle_lock:
            if self._state is State.RUNNING:
                return
            self._refuse_if_forked()
            self._refuse_if_closed()
            ready: Future[None] = Future()
            self._thread = threading.Thread(
                target=self._run_loop, args=(ready,), name="microbatching-loop", daemon=True
            )
            self._thread.start()
            ready.result()
            self._state = State.RUNNING
            self._update_guard()
            _exit_hooks.add(self)
            _started.add(self)

    def _run_loop(self, ready: Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._engine.bind(loop)
        except BaseException as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def submit_job(  # deadline is not keyword-only: see AsyncMicroBatching.submit_job_nowait
        self,
        job: Job[Any],
        block: bool = True,
        timeout: float | None = None,
        deadline: float | None = None,
        *,
        wait_stored: bool = False,
    ) -> JobResult:
        """Accept ``job`` and return its :class:`JobResult`; thread-safe.

        At ``max_pending`` it waits for room (up to ``timeout`` seconds), or with
        ``block=False`` raises :class:`QueueFullError` at once; on a durable queue it also
        waits while the queue's ``max_unstored`` accepted jobs are not yet stored.  With
        ``wait_stored=True`` it returns only once the durable queue has stored the job
        (raising the queue's error if it could not).  ``deadline`` is seconds from now by
        which the job should have its result: if its batch has not started by then, it
        fails with :class:`DeadlineExceededError` and never runs.  With ``shed=True`` a job
        predicted to miss ``latency_target`` is refused with :class:`OverloadedError`.
        """
        try:
            handle = job._handle
        except AttributeError:
            raise self._not_a_job(job) from None
        if handle is not None:
            job = self._resubmitted(job, handle)
        if self._guarded or deadline is not None:
            self._admit_checked(job, block, timeout, deadline)
        handle = new_handle()
        handle.job = job
        job._handle = handle
        job._submitted_at = job._ready_at = _monotonic()
        stored = self._adapter.watch_stored(job) if wait_stored else None
        self._engine.inbox.submit(job)
        if stored is not None:
            stored.result()
        return handle

    def submit(  # deadline is not keyword-only: see AsyncMicroBatching.submit_job_nowait
        self, item: Any, block: bool = True, timeout: float | None = None, deadline: float | None = None
    ) -> JobResult:
        """Accept one item (no ``Job`` needed) and return its handle; thread-safe, the fastest submit.

        As ``submit_job`` otherwise (``deadline`` included): the processor gets the item as a
        job's data (or the item itself, with ``takes="items"``); a Job is made for it only
        where one is needed.
        """
        if self._guarded or deadline is not None:
            return self.submit_job(Job(None, item), block, timeout, deadline=deadline)
        handle = new_handle()
        handle.job = None
        self._engine.inbox.submit_item(item, handle)
        return handle

    def submit_many(
        self, items: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> Future[list[Any]]:
        """Submit many items at once; one handle whose ``result()`` is their results, in order.

        The way to push many items: one call, batches of ``batch_size`` that leave at once.
        An item that failed has its exception in its slot; the others are not held back by
        it.  At ``max_pending`` it waits for room item by item (or with ``block=False`` raises).
        """
        values = list(items)
        results: Future[list[Any]] = Future()
        if not values:
            results.set_result([])
        elif self._guarded or self._buffer.announce is not None:  # each item must pass as a Job
            self._gather([self.submit(value, block, timeout) for value in values], results)
        else:
            self._engine.inbox.submit_many(values, Many(len(values), many_future_done(results)))
        return results

    @staticmethod
    def _gather(handles: list[JobResult], results: Future[list[Any]]) -> None:
        collector = Many(len(handles), many_future_done(results))
        for slot, handle in enumerate(handles):
            handle.add_done_callback(lambda done, slot=slot: collector.set(slot, _outcome(done)))

    def _admit_checked(
        self, job: Job[Any], block: bool, timeout: float | None, deadline: float | None
    ) -> None:
        """The deadline (counted from the call, waiting for room included), then ``_admit``."""
        if deadline is not None:
            due = self._expect_deadline(deadline, _monotonic())
        if self._guarded:
            self._admit(job, block, timeout)
        if deadline is not None:  # only once admitted: a refused job keeps none
            job._deadline = due

    def _admit(self, job: Job[Any], block: bool, timeout: float | None) -> None:
        """The checks a plain running batcher can skip: lifecycle, encoding, then room."""
        if self._state is not State.RUNNING:
            self._refuse_if_forked()
            self._refuse_if_closed()
            self.start()
        self._encode(job)
        if self.options.shed:
            self._engine.shed_if_overloaded()
        adapter = self._adapter
        if not adapter.has_store_room():
            self._refuse_waiting_for_itself(block, "not yet stored jobs")
            if not block or not adapter.wait_for_store_room(timeout):
                self._refuse_if_closed()
                raise self._unstored_full(timeout if block else None)
        pending = self._pending
        if not isinstance(pending, ThreadSafePending) or pending.take(False, None):
            return
        self._refuse_waiting_for_itself(block, f"max_pending={self.options.max_pending}")
        if not pending.take(block, timeout):
            self._refuse_if_closed()  # woken by shutdown
            raise self._queue_full(timeout if block else None)

    def _refuse_waiting_for_itself(self, block: bool, what: str) -> None:
        if block and self._on_own_threads():
            raise RuntimeError(
                f"submit_job() from an event handler or the processor found {what} reached and would "
                "wait for room only this batcher can free: it would wait for itself (pass block=False, "
                "or submit from another thread)"
            )

    def _on_own_threads(self) -> bool:
        return threading.current_thread() is self._thread or self._engine.is_processing_here()

    def shutdown(self, timeout: float | None = None, *, cancel: bool = False) -> None:
        """Stop admission, flush the open batch at once, wait for every accepted job, stop the thread.

        With ``timeout``, jobs unfinished after that many seconds are abandoned; with
        ``cancel=True`` at once.  Abandoned jobs fail with ``JobCancelledError``.
        Idempotent, and callable from several threads at once: a second call with a
        timeout or ``cancel=True`` ends a graceful shutdown that is stuck.  Must not be
        called from an event handler or the processor (it would wait for itself).
        """
        with _lifecycle_lock:
            if self._forked_from is not None or self._state is State.CLOSED:
                return
            if self._state is State.NEW:
                self._state = State.CLOSED
                return
            if self._on_own_threads():
                raise RuntimeError(
                    "shutdown() cannot be called from an event handler or the processor: it would wait "
                    "for itself (call it from another thread, after the batch returns)"
                )
            if self._state is State.RUNNING:
                self._state = State.CLOSING
                self._update_guard()
                if isinstance(self._pending, ThreadSafePending):
                    self._pending.close()  # blocked submitters wake up and see the shutdown
            drained = self._drained
            first = drained is None
            if drained is None:
                drained = self._drained = asyncio.run_coroutine_threadsafe(
                    self._engine.drain(timeout, cancel), self._loop
                )
        if not first:  # a shutdown is under way: this call may only end it sooner
            self._end_sooner(drained, timeout, cancel)
        self._wait_while_the_loop_runs(drained)
        self._stop_loop()

    def _end_sooner(self, drained: Future[None], timeout: float | None, cancel: bool) -> None:
        reason = "shutdown(cancel=True)" if cancel else f"shutdown timed out after {timeout}s"
        if not cancel:
            if timeout is None:
                return
            try:
                drained.result(timeout)
                return
            except concurrent.futures.TimeoutError:
                pass
        try:
            self._loop.call_soon_threadsafe(self._engine.abandon, reason)
        except RuntimeError:  # the loop stopped meanwhile: the shutdown is over
            pass

    def _wait_while_the_loop_runs(self, future: Future[T]) -> T | None:
        # The loop stops only after a drain finished; then this one can never run.
        while True:
            try:
                return future.result(timeout=0.05)
            except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before 3.11
                if not self._thread.is_alive():
                    return None

    def _stop_loop(self) -> None:
        with _STOP_LOCK:
            if self._state is State.CLOSED:
                return
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._engine.inbox.settle_leftovers()  # submits that raced the loop's stop
            self._state = State.CLOSED
            _exit_hooks.discard(self)

    def _on_loop(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the loop thread and wait for it (directly, before start or after shutdown)."""
        thread = getattr(self, "_thread", None)
        if thread is None or thread is threading.current_thread() or not thread.is_alive():
            call()
            return
        done: Future[None] = Future()

        def run() -> None:
            try:
                call()
            except BaseException as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        try:
            self._loop.call_soon_threadsafe(run)
        except RuntimeError:  # the loop closed meanwhile
            call()
            return
        self._wait_while_the_loop_runs(done)

    def stats(self) -> Stats:
        """A consistent snapshot of the counters, taken on the loop thread."""
        thread = getattr(self, "_thread", None)  # none before start
        if thread is None or thread is threading.current_thread() or not thread.is_alive():
            return self._engine_stats()
        snapshot: Future[Stats] = Future()
        try:
            self._loop.call_soon_threadsafe(lambda: snapshot.set_result(self._engine_stats()))
        except RuntimeError:  # the loop closed meanwhile: nothing moves any more
            return self._engine_stats()
        return self._wait_while_the_loop_runs(snapshot) or self._engine_stats()

    def __enter__(self) -> MicroBatching:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    # -- fork ----------------------------------------------------------------------------------

    def _refuse_if_forked(self) -> None:
        if self._forked_from is not None:
            raise RuntimeError(
                f"this MicroBatching was started in process {self._forked_from}, and its thread does not "
                f"exist in this forked child (process {os.getpid()}): make a new batcher in the child"
            )

    def _after_fork_in_child(self) -> None:
        """The loop thread is gone in the child: refuse use clearly; the parent owns the jobs."""
        self._forked_from = os.getppid()
        self._state = State.CLOSED  # nothing to shut down here: the parent owns the jobs
        self._update_guard()
        if isinstance(self._pending, ThreadSafePending):
            self._pending.reset_after_fork()
        _exit_hooks.discard(self)


def _outcome(handle: JobResult) -> Any:
    error = handle.exception()
    return handle.result() if error is None else error


_lifecycle_lock = threading.RLock()
_STOP_LOCK = threading.Lock()
_exit_hooks: weakref.WeakSet[MicroBatching] = weakref.WeakSet()
_started: weakref.WeakSet[MicroBatching] = weakref.WeakSet()


def _drain_at_exit() -> None:
    batchers = list(_exit_hooks)
    unfinished = sum(batcher._pending.count + batcher._engine.inbox.backlog for batcher in batchers)
    if unfinished:
        _say_draining(unfinished)
    for batcher in batchers:
        try:
            batcher.shutdown()
        except Exception:  # one batcher's failure must not leave the others undrained
            logger.exception("draining %r at exit failed", batcher)


def _say_draining(unfinished: int) -> None:
    """At exit with jobs unfinished: let a (further) Ctrl-C stop at once, and say so."""
    if threading.current_thread() is threading.main_thread():

        def stop_at_once(signum: int, frame: object) -> None:
            sys.stderr.write("\nmicrobatching: stopped at once; unfinished jobs were not processed\n")
            sys.stderr.flush()
            os._exit(130)

        try:
            signal.signal(signal.SIGINT, stop_at_once)
        except ValueError:  # not the main thread of the main interpreter
            pass
    sys.stderr.write(
        f"microbatching: finishing {unfinished} accepted job{'s' if unfinished != 1 else ''} before exit "
        "(Ctrl-C to stop at once: unfinished jobs are then lost)\n"
    )
    sys.stderr.flush()


def _after_fork_in_child() -> None:
    global _lifecycle_lock, _STOP_LOCK
    _lifecycle_lock = threading.RLock()
    _STOP_LOCK = threading.Lock()
    reset_handles_after_fork()
    for batcher in list(_started):
        if batcher._state is not State.CLOSED:
            batcher._after_fork_in_child()


# Run before concurrent.futures' own exit hook, which stops the executors a queue may use
# (later registrations run first; importing concurrent.futures.thread above registered it).
_register = getattr(threading, "_register_atexit", atexit.register)
_register(_drain_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
