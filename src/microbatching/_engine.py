"""The batching engine: one asyncio implementation behind both batchers.

It owns the buffer of ready jobs, the time/size/weight triggers, the concurrency cap,
the processor call, the mapping of results to jobs, retries and the drain at shutdown.
It runs on one event loop (the caller's for ``AsyncMicroBatching``, a private thread's
for ``MicroBatching``); ``accept_threadsafe`` is the only entry point for other threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ._batch import Batch, check_results, plural
from ._events import EventEmitter
from ._job import Job
from ._options import Options, resolve_processor
from ._stats import Recorder, Stats
from .adapters.base import Adapter
from .errors import BatchTimeoutError, JobCancelledError, JobFailedError, ShutdownError

__all__ = ["Engine"]

logger = logging.getLogger("microbatching")

# Which engine's sync processor the current worker thread is running, if any.
_processing = threading.local()

_ALREADY_SETTLED = (asyncio.InvalidStateError, concurrent.futures.InvalidStateError)
# Threads beyond max_concurrent_batches, for sync processors that outlived batch_timeout:
# such a thread cannot be killed, so the pool keeps room for new batches beside it.
_SPARE_PROCESSOR_THREADS = 4


class Engine:
    """Batches accepted jobs and runs them through the processor."""

    # Slots: the per-job path reads a few of these for every job, and slot reads are the
    # fastest attribute access CPython has.
    __slots__ = (
        "_abandoning",
        "_adapter",
        "_batch_size",
        "_closed",
        "_counts",
        "_deliveries",
        "_direct",
        "_drain_task",
        "_draining",
        "_emitter",
        "_enter",
        "_executor",
        "_func",
        "_idle",
        "_in_flight",
        "_inbox",
        "_inbox_scheduled",
        "_interval",
        "_is_async",
        "_loop",
        "_max_weight",
        "_open",
        "_ready",
        "_retries",
        "_running",
        "_tasks",
        "_timer",
        "_triggers",
        "_weigh",
        "accept",
        "announce_added",
        "loop",
        "now",
        "on_counted",
        "on_final",
        "options",
        "pending",
        "recorder",
        "reraise_interrupts",
        "wrap_errors",
    )  # fmt: skip

    def __init__(self, options: Options, processor: object, emitter: EventEmitter, adapter: Adapter) -> None:
        self.options = options
        self._func, self._is_async = resolve_processor(processor)
        self._emitter = emitter
        self._adapter = adapter
        self._batch_size = options.batch_size
        self._interval = options.batch_interval
        self._weigh = options.weight if options.max_batch_weight is not None else None
        self._max_weight = options.max_batch_weight or 0.0
        self._open = Batch()
        self._ready: deque[Batch] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._retries: dict[Job[Any], asyncio.TimerHandle] = {}
        self._inbox: deque[Job[Any]] = deque()  # submitted from other threads
        self._deliveries: deque[Job[Any]] = deque()  # delivered by a queue from other threads
        self._inbox_scheduled = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._draining = False
        self._abandoning = False
        self._closed = False
        self._idle: asyncio.Future[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        #: Told how many jobs stopped counting as pending (final, or given back to a queue),
        #: and how many started counting without a submit (delivered from elsewhere).
        self.on_final: Callable[[int], None] | None = None
        self.on_counted: Callable[[int], None] | None = None
        #: Fail jobs with JobFailedError (cause, attempts); the decorator turns it off to
        #: raise the processor's own error, as a plain function call would.
        self.wrap_errors = True
        #: Re-raise KeyboardInterrupt/SystemExit from a processor: only on the caller's own
        #: loop (AsyncMicroBatching), never on MicroBatching's private loop thread.
        self.reraise_interrupts = False
        self.pending = 0
        self._counts = {
            "completed": 0,
            "failed": 0,
            "retried": 0,
            "cancelled": 0,
            "processor_errors": 0,
        }
        self._triggers = {"size": 0, "time": 0, "weight": 0, "shutdown": 0}
        self._in_flight = 0
        self.recorder = Recorder()  # per-batch statistics, read by stats() and exporters
        # Bound once, so the per-job path makes no choice it could make here.
        self.accept: Callable[[Job[Any]], None] = (
            self._accept_plain if self._weigh is None else self._accept_weighed
        )
        self._enter = adapter.admit
        # The in-memory queue without weights: admit puts jobs straight into the open batch.
        self._direct = adapter.direct and self._weigh is None
        #: The job_added handlers (empty when nobody listens): the batcher updates it as
        #: listeners change, so the per-job path reads one slot instead of looking it up.
        self.announce_added: tuple[Callable[..., Any], ...] = ()
        adapter.attach(self)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` from now on (called once, by the batcher's start)."""
        self._loop = self.loop = loop
        # The loop's own clock, read without a Python-level call when it is the stock
        # monotonic one (a custom loop, like a test's virtual clock, keeps its own).
        default_clock = type(loop).time is asyncio.BaseEventLoop.time
        self.now: Callable[[], float] = time.monotonic if default_clock else loop.time
        if not self._is_async:
            self._processor_threads()

    @property
    def draining(self) -> bool:
        """Whether shutdown has begun (queues stop fetching new jobs then)."""
        return self._draining

    # -- admission -------------------------------------------------------------------------

    def admit(self, job: Job[Any]) -> None:
        """A newly submitted job is counted, announced and handed to the queue (loop thread).

        This runs for every submit: for the in-memory queue it does ``_accept_plain``'s work
        inline (keep the two in step), since even one more call is measurable in bulk.
        """
        self.pending += 1
        if self.announce_added:
            self._emitter.dispatch("job_added", self.announce_added, (job,))
        if not self._direct:
            self._enter(job)
            return
        jobs = self._open.jobs
        jobs.append(job)
        if len(jobs) >= self._batch_size:
            self._close("size")
        elif len(jobs) == 1:
            self._opened(job)

    def admit_threadsafe(self, job: Job[Any]) -> None:
        """``admit(job)`` from any thread (refused once shutdown has begun)."""
        self._inbox.append(job)
        self._wake()

    def deliver_threadsafe(self, job: Job[Any]) -> None:
        """``deliver(job)`` from any thread."""
        self._deliveries.append(job)
        self._wake()

    def _wake(self) -> None:
        """Have the loop drain the inboxes; wake-ups are coalesced into one callback."""
        if self._closed:  # the loop is gone or going: settle what is left from this thread
            self._reject_leftovers()
            return
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:  # the loop closed between the check and the call
                self._reject_leftovers()

    def _reject_leftovers(self) -> None:
        """Settle jobs that reached the inboxes after the engine closed (any thread)."""
        while self._inbox:
            try:
                self._reject_late(self._inbox.popleft())
            except IndexError:  # another thread took the last one
                break
        while self._deliveries:
            try:
                job = self._deliveries.popleft()
            except IndexError:
                break
            logger.warning("dropping %r: delivered by the queue after shutdown", job)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False  # before popping: a later append schedules again
        deliveries = self._deliveries
        for _ in range(len(deliveries)):
            self.deliver(deliveries.popleft())
        inbox = self._inbox
        if self._draining:
            for _ in range(len(inbox)):
                self._reject_late(inbox.popleft())
            return
        admit = self.admit
        for _ in range(len(inbox)):
            admit(inbox.popleft())

    def deliver(self, job: Job[Any]) -> None:
        """A job handed back by a user queue's ``process`` callback (loop thread)."""
        if self._closed:
            logger.warning("dropping %r: delivered by the queue after shutdown", job)
            return
        own = self._adapter.delivered(job)
        if own is None:  # submitted elsewhere (or given back to a durable queue): pending again
            self.pending += 1
            if self.on_counted is not None:
                self.on_counted(1)
            own = job
        own._ready_at = self.now()
        self.accept(own)

    def _reject_late(self, job: Job[Any]) -> None:
        handle = job._handle
        if handle is not None and not handle.done():
            handle.set_exception(ShutdownError("the batcher shut down before this job was accepted"))
        if self.on_final is not None:
            self.on_final(1)

    # -- buffering and triggers ------------------------------------------------------------

    def _accept_plain(self, job: Job[Any]) -> None:
        """``accept``: put a ready job into the open batch; dispatch on size, or at once when draining."""
        jobs = self._open.jobs
        jobs.append(job)
        if len(jobs) >= self._batch_size:
            self._close("size")
        elif len(jobs) == 1:
            self._opened(job)

    def _accept_weighed(self, job: Job[Any]) -> None:
        """``accept`` with a weight limit: close the batch before it would grow too heavy."""
        try:
            weight = float(self._weigh(job))  # type: ignore[misc]
        except Exception as exc:
            self.fail_for_good(job, exc)
            return
        limit = self._max_weight
        if self._open.jobs and self._open.weight + weight > limit:
            self._close("weight")
        batch = self._open
        batch.jobs.append(job)
        batch.weight += weight
        if len(batch.jobs) >= self._batch_size:
            self._close("size")
        elif batch.weight >= limit:
            self._close("weight")
        elif len(batch.jobs) == 1:
            self._opened(job)

    def _opened(self, job: Job[Any]) -> None:
        # The time trigger counts from the moment the batch's first job became ready.
        self._open.opened_at = job._ready_at
        if self._draining:
            self._open.due = "shutdown"
            self._pump()
        else:
            self._timer = self._loop.call_at(job._ready_at + self._interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._open.due = "time"
        self._pump()

    def _close(self, trigger: str) -> None:
        batch = self._open
        batch.trigger = trigger
        self._open = Batch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ready.append(batch)
        self._pump()

    def _pump(self) -> None:
        """Start batches while a slot is free: full ones first, then the open one once due."""
        while self._running < self.options.max_concurrent_batches:
            if self._ready:
                batch = self._ready.popleft()
            elif self._open.jobs and self._open.due:
                batch = self._open
                batch.trigger = batch.due
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._open = Batch()
            else:
                return
            self._running += 1
            self._triggers[batch.trigger] += 1
            task = self._loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- running a batch -------------------------------------------------------------------

    async def _run(self, batch: Batch) -> None:
        jobs = self._start_attempts(batch)
        results: Sequence[Any] = ()
        error: BaseException | None = None
        self._in_flight += len(jobs)
        try:
            if jobs:
                results = check_results(await self._call(jobs), len(jobs))
        except asyncio.CancelledError as exc:
            error = JobCancelledError("job abandoned at shutdown") if self._abandoning else exc
        except BaseException as exc:
            error = exc
        finally:
            ended = self.now()
            self._in_flight -= len(jobs)
            self._running -= 1
        try:
            if error is None:
                self._settle(batch, jobs, results)
            else:
                self._fail_batch(batch, jobs, error)
            self.recorder.record(batch, jobs, results, ended, error)
        except Exception as exc:  # a bug in a hook (an adapter, say): strand no job, stop nothing
            logger.exception("settling batch %s failed; failing its unsettled jobs", batch.id)
            self._fail_unsettled(jobs, exc)
        finally:
            self._pump()
        if self.reraise_interrupts and isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise error  # raised on the caller's loop: let it stop the program, jobs settled first

    def _fail_unsettled(self, jobs: list[Job[Any]], error: BaseException) -> None:
        for job in jobs:
            handle = job._handle
            if handle is not None and not handle.done():
                try:
                    self.fail_for_good(job, error)
                except Exception:
                    logger.exception("could not fail %r", job)

    def _start_attempts(self, batch: Batch) -> list[Job[Any]]:
        """Count the attempt of each job; drop the ones whose handle was cancelled meanwhile."""
        live = batch.jobs
        dropped = False
        for job in live:
            handle = job._handle
            if handle is not None and handle.done():
                dropped = True
            job.attempts += 1
        if dropped:  # events and the processor see only the jobs that run
            live = batch.jobs = [job for job in live if not self._dropped_if_cancelled(job)]
        batch.started_at = self.now()
        if self._emitter._handlers.get("batch_started"):
            self._emitter.emit("batch_started", batch)
        return live

    def _dropped_if_cancelled(self, job: Job[Any]) -> bool:
        handle = job._handle
        if handle is None or not handle.done():
            return False
        job.attempts -= 1  # counted above, but never started
        self._counts["cancelled"] += 1
        self._finalize(job, JobCancelledError("job cancelled by its submitter"))
        return True

    async def _call(self, jobs: list[Job[Any]]) -> object:
        timeout = self.options.batch_timeout
        if timeout is None:
            return await self._invoke(jobs)
        try:
            return await asyncio.wait_for(self._invoke(jobs), timeout)
        except asyncio.TimeoutError:
            raise BatchTimeoutError(
                f"processor ran longer than batch_timeout={timeout}s on a batch of {plural(len(jobs), 'job')}"
            ) from None

    async def _invoke(self, jobs: list[Job[Any]]) -> object:
        """The processor's results for a copy of ``jobs`` (a copy: it may mutate the list)."""
        if self._is_async:
            return await self._func(list(jobs))
        results = await self._loop.run_in_executor(self._processor_threads(), self._run_sync, list(jobs))
        if inspect.isawaitable(results):  # a plain callable that returned a coroutine
            results = await results
        return results

    def _run_sync(self, jobs: list[Job[Any]]) -> object:
        """The sync processor, in a worker thread that knows which engine it works for."""
        _processing.engine = self
        try:
            return self._func(jobs)
        finally:
            _processing.engine = None

    def is_processing_here(self) -> bool:
        """Whether the caller runs inside this engine's processor (where shutdown would deadlock)."""
        if getattr(_processing, "engine", None) is self:
            return True
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop runs in this thread
            return False
        return task is not None and task in self._tasks

    def _processor_threads(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            workers = self.options.max_concurrent_batches + _SPARE_PROCESSOR_THREADS
            self._executor = concurrent.futures.ThreadPoolExecutor(workers, "microbatching-processor")
            # Start every thread the pool may use now, not on demand: Python 3.12 refuses
            # to start a thread at interpreter exit (when the exit hook still drains the
            # batcher), and the pool queues the batch before it finds that out, so the
            # batch would both fail and run.  The barrier holds each task until all run.
            all_started = threading.Barrier(workers)
            for _ in range(workers):
                self._executor.submit(all_started.wait, 10)
        return self._executor

    # -- outcomes ----------------------------------------------------------------------------

    def _settle(self, batch: Batch, jobs: list[Job[Any]], results: Sequence[Any]) -> None:
        failed: list[tuple[Job[Any], Exception]] = []
        announce = self._emitter._handlers.get("job_completed")
        for job, result in zip(jobs, results, strict=False):
            if isinstance(result, Exception):
                failed.append((job, result))
                continue
            handle = job._handle
            if handle is not None:
                try:
                    handle.set_result(result)
                except _ALREADY_SETTLED:
                    pass
            if announce:
                self._emitter.dispatch("job_completed", announce, (job, result))
        if self._emitter._handlers.get("batch_completed"):
            self._emitter.emit("batch_completed", batch, results)
        for job, exc in failed:
            self._fail_job(job, exc)
        done = len(jobs) - len(failed)
        self._counts["completed"] += done
        if not self._adapter.settles:  # nothing to acknowledge: count them in one go
            self._finalized(done)
        else:
            for job, result in zip(jobs, results, strict=False):
                if not isinstance(result, Exception):
                    self._finalize(job, None)

    def _fail_batch(self, batch: Batch, jobs: list[Job[Any]], error: BaseException) -> None:
        self._counts["processor_errors"] += 1
        if self._emitter._handlers.get("batch_failed"):
            self._emitter.emit("batch_failed", batch, error)
        for job in jobs:
            self._fail_job(job, error)

    def _fail_job(self, job: Job[Any], error: BaseException) -> None:
        handle = job._handle
        if self._abandoning or (handle is not None and handle.done()):
            self.fail_for_good(job, error)
            return
        delay = self._retry_delay(job, error)
        if delay is not None:
            self._counts["retried"] += 1
            if self._emitter._handlers.get("job_retrying"):
                self._emitter.emit("job_retrying", job, error, delay)
            self._adapter.retry(job, delay)
            return
        self.fail_for_good(job, error)

    def _retry_delay(self, job: Job[Any], error: BaseException) -> float | None:
        """Seconds until ``job`` may try again, or ``None`` when it gets no more attempts."""
        policy = self.options.retry
        if policy is None:
            return None
        try:
            return policy.delay(job.attempts) if policy.should_retry(error, job.attempts) else None
        except Exception:  # a retry_on predicate that raises: no retry, but no stranded job
            logger.exception("the retry policy raised while judging %r; failing it for good", job)
            return None

    def fail_for_good(self, job: Job[Any], error: BaseException) -> None:
        """Give ``job`` its final failure now, without retrying."""
        if isinstance(error, (JobCancelledError, ShutdownError)) or not self.wrap_errors:
            final: BaseException = error
        else:
            final = JobFailedError(job, error, job.attempts)
            final.__cause__ = error
        handle = job._handle
        if handle is not None:
            try:
                handle.set_exception(final)
            except _ALREADY_SETTLED:
                pass
        # An abandoned job did not fail: it is counted with the cancelled ones.
        self._counts["cancelled" if isinstance(final, JobCancelledError) else "failed"] += 1
        if self._emitter._handlers.get("job_failed"):
            self._emitter.emit("job_failed", job, final)
        self._finalize(job, final)

    def hold_for_retry(self, job: Job[Any], delay: float) -> None:
        """Keep ``job`` here for ``delay`` seconds, then hand it to the adapter's ``requeue``."""
        self._retries[job] = self._loop.call_later(delay, self._retry_ready, job)

    def _retry_ready(self, job: Job[Any]) -> None:
        del self._retries[job]
        job._ready_at = self.now()  # its age for the time trigger starts again now
        self._adapter.requeue(job)

    def release(self, job: Job[Any]) -> None:
        """The job left this process without an outcome here (a durable queue took it back).

        It stops counting as pending; its handle, if any, stays unresolved for the adapter
        to settle later or fail at shutdown.
        """
        self._finalized(1)

    def _finalize(self, job: Job[Any], error: BaseException | None) -> None:
        self._adapter.finished(job, error)
        self._finalized(1)

    def _finalized(self, count: int) -> None:
        self.pending -= count
        if self.on_final is not None:
            self.on_final(count)
        if self.pending == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None, cancel: bool = False) -> None:
        """Flush, finish (or with ``cancel``, abandon) every accepted job, then close."""
        caller = asyncio.current_task()
        if caller is not None and caller in self._emitter._tasks:  # an async handler shutting down
            self._emitter._awaiting_shutdown.add(caller)
        if self._drain_task is None:
            self._drain_task = self._loop.create_task(self._drain(timeout, cancel))
        elif cancel and not self._abandoning:
            self._abandon("shutdown(cancel=True)")
        await asyncio.shield(self._drain_task)

    async def _drain(self, timeout: float | None, cancel: bool) -> None:
        deadline = None if timeout is None else self._loop.time() + timeout
        self._drain_inbox()  # jobs submitted before shutdown began are still admitted
        self._draining = True
        self._emitter.emit("shutdown_started")
        if self._open.jobs and not self._open.due:
            self._open.due = "shutdown"
        self._pump()
        if cancel:
            self._abandon("shutdown(cancel=True)")
        elif not await self._wait_idle(timeout):
            self._abandon(f"shutdown timed out after {timeout}s")
        while self._tasks:
            # Discard finished tasks here: awaiting already-finished tasks does not yield,
            # so their done-callbacks (which discard them too) would never get to run.
            running = list(self._tasks)
            await asyncio.gather(*running, return_exceptions=True)
            self._tasks.difference_update(running)
        self._closed = True
        self._drain_inbox()
        await self._adapter.close()
        left = None if deadline is None else max(0.0, deadline - self._loop.time())
        await self._emitter.wait_for_handlers(left)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._emitter.emit("shutdown_completed")

    async def _wait_idle(self, timeout: float | None) -> bool:
        if self.pending == 0:
            return True
        self._idle = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _abandon(self, reason: str) -> None:
        self._abandoning = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting = [job for batch in (*self._ready, self._open) for job in batch.jobs]
        self._ready.clear()
        self._open = Batch()
        for job, timer in self._retries.items():
            timer.cancel()
            waiting.append(job)
        self._retries.clear()
        waiting.extend(self._adapter.abandon())
        if waiting or self._in_flight:
            logger.warning(
                "%s: abandoning %d waiting and %d running jobs",
                reason,
                len(waiting),
                self._in_flight,
                extra={"abandoned_waiting": len(waiting), "abandoned_running": self._in_flight},
            )
        for job in waiting:
            self.fail_for_good(job, JobCancelledError("job abandoned at shutdown"))
        for task in self._tasks:
            task.cancel()

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> Stats:
        """A consistent snapshot of the counters (call on the loop thread)."""
        buffered = len(self._open.jobs) + sum(len(batch.jobs) for batch in self._ready)
        counts = self._counts
        finals = counts["completed"] + counts["failed"] + counts["cancelled"]
        return Stats(
            submitted=self.pending + finals,
            **counts,
            pending=self.pending,
            buffered=buffered,
            in_flight=self._in_flight,
            retrying=len(self._retries),
            batches=sum(self._triggers.values()),
            batches_by_trigger=dict(self._triggers),
            **self.recorder.summaries(),
        )
