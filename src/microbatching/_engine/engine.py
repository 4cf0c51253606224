"""The batching engine: one asyncio implementation behind both batchers.

It wires the parts together -- the :class:`~.buffer.Buffer` (batches and their triggers),
the :class:`~.runner.Runner` (the processor call), the :class:`~.outcomes.Outcomes`
(results, retries, counters), the :class:`~.pending.Pending` count, the
:class:`~.inbox.Inbox` for other threads, and the queue's adapter -- and owns the
lifecycle: start, the concurrency slots, and the drain at shutdown.  It runs on one event
loop (the caller's for ``AsyncMicroBatching``, a private thread's for ``MicroBatching``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._batch import Batch
from .._job import Job
from .._options import Options
from .._stats import Recorder, Stats
from ..adapters.base import Adapter
from ..errors import JobCancelledError, OverloadedError, ShutdownError
from .adaptive import AdaptiveBuffer, Controller
from .buffer import Buffer
from .inbox import Inbox
from .items import to_jobs
from .outcomes import Outcomes
from .pending import Pending
from .processor import check_results, resolve_processor
from .runner import Runner

if TYPE_CHECKING:
    from .._events import EventEmitter

__all__ = ["Engine"]

logger = logging.getLogger("microbatching")

#: Events whose handlers receive Jobs (a batch of items gets Jobs made when one listens).
_JOB_EVENTS = (
    "batch_started",
    "batch_completed",
    "batch_failed",
    "job_completed",
    "job_failed",
    "job_retrying",
)


class Engine:
    """Batches accepted jobs and runs them through the processor."""

    def __init__(
        self, options: Options, processor: object, emitter: EventEmitter, adapter: Adapter, pending: Pending
    ) -> None:
        self.options = options
        func, is_async = resolve_processor(processor)
        #: The processor takes the jobs' data, not the jobs (``takes="items"``).
        self.takes_items = options.takes == "items"
        self._emitter = emitter
        self._adapter = adapter
        self.pending = pending
        self.runner = Runner(func, is_async, options.batch_timeout, options.max_concurrent_batches, self)
        self.outcomes = Outcomes(options.retry, emitter, adapter, pending)
        self.recorder = Recorder()  # per-batch statistics, read by stats() and exporters
        #: The adaptive policy's decisions (``None`` under the fixed policy).
        self.controller: Controller | None = None
        self.buffer = self._make_buffer(options, pending)
        if not adapter.direct:
            self.buffer.route = adapter.admit
        self.inbox = Inbox(self.buffer, self.deliver, self._refuse_late)
        #: Re-raise KeyboardInterrupt/SystemExit from a processor: only on the caller's own
        #: loop (AsyncMicroBatching), never on MicroBatching's private loop thread.
        self.reraise_interrupts = False
        self._running = 0
        self._in_flight = 0
        self._tasks: dict[asyncio.Task[None], Batch] = {}
        self._drain_task: asyncio.Task[None] | None = None
        self._closed = False
        adapter.attach(self)

    def _make_buffer(self, options: Options, pending: Pending) -> Buffer:
        if not options.adaptive:
            return Buffer(
                options.batch_size,
                options.batch_interval,
                options.weight,
                options.max_batch_weight,
                pending,
                self._pump,
                self.outcomes.fail_for_good,
            )
        controller = self.controller = Controller(options)
        self.recorder.subscribe(controller.observe)  # it learns from every finished batch
        return AdaptiveBuffer(
            options, pending, self._pump, self.outcomes.fail_for_good, controller, self.outcomes.fail_late
        )

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` from now on (called once, by the batcher's start, on the loop thread)."""
        self.loop = loop
        # The loop's own clock, read without a Python-level call when it is the stock
        # monotonic one (a custom loop, like a test's virtual clock, keeps its own).
        default_clock = type(loop).time is asyncio.BaseEventLoop.time
        self.now: Callable[[], float] = time.monotonic if default_clock else loop.time
        self.buffer.bind(loop, self.now)
        self.outcomes.bind(loop, self.now)
        self.inbox.bind(loop)
        self.runner.start()
        self._adapter.start()

    # -- what adapters call (EngineSide) ------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Whether shutdown has begun (queues stop fetching new jobs then)."""
        return self.buffer.draining

    def accept(self, job: Job[Any]) -> None:
        """Put a ready job into the buffer (loop thread)."""
        self.buffer.add(job)

    def deliver(self, job: Job[Any]) -> None:
        """A job handed over by the queue (loop thread): this process's own, or one from elsewhere."""
        if self._closed:
            logger.warning("dropping %r: delivered by the queue after shutdown", job)
            return
        own, counted = self._adapter.delivered(job)
        if not counted:
            self.pending.add(1)
        own._ready_at = self.now()
        self.buffer.add(own)

    def deliver_threadsafe(self, job: Job[Any]) -> None:
        """``deliver`` from any thread."""
        self.inbox.deliver(job)

    def hold_for_retry(self, job: Job[Any], delay: float) -> None:
        """Keep ``job`` in memory for ``delay`` seconds, then hand it to the adapter's ``requeue``."""
        self.outcomes.hold_for_retry(job, delay)

    def fail_for_good(self, job: Job[Any], error: BaseException) -> None:
        """Give ``job`` its final failure now."""
        self.outcomes.fail_for_good(job, error)

    def release(self, job: Job[Any]) -> None:
        """``job`` left this process without an outcome here (a durable queue took it back).

        It stops counting as pending; its handle, if any, stays unresolved for the adapter
        to settle later or fail at shutdown.
        """
        self.pending.done(1)

    # -- submitted on other threads -------------------------------------------------------------

    def _refuse_late(self, job: Job[Any]) -> None:
        """A job submitted from another thread that reached the loop after shutdown began."""
        handle = job._handle
        if handle is not None and not handle.done():
            handle.set_exception(ShutdownError("the batcher shut down before this job was accepted"))
        self.pending.give_back(1)

    # -- running batches ----------------------------------------------------------------------

    def _pump(self) -> None:
        """Start batches while a slot is free: full ones first, then the open one once due."""
        while self._running < self.options.max_concurrent_batches:
            batch = self.buffer.next_batch()
            if batch is None:
                return
            self._running += 1
            task = self.loop.create_task(self._run(batch))
            self._tasks[task] = batch
            task.add_done_callback(self._batch_done)

    async def _run(self, batch: Batch) -> None:
        batch.running = True
        items = batch.futures is not None or batch.bulk is not None
        if items and not self._items_run_as_they_are():
            to_jobs(batch, self.now())
            items = False
        jobs = self.outcomes.start_items(batch) if items else self.outcomes.start_attempts(batch)
        batch.started_at = self.now()
        if not items and self._emitter.listening("batch_started"):
            self._emitter.emit("batch_started", batch)
        results: list[Any] = []
        error: BaseException | None = None
        self._in_flight += len(jobs)
        try:
            if jobs:
                given = [job.data for job in jobs] if self.takes_items and not items else jobs
                results = check_results(await self.runner.call(given), len(jobs))
        except asyncio.CancelledError as exc:
            error = JobCancelledError("job abandoned at shutdown") if self.outcomes.abandoning else exc
        except BaseException as exc:
            error = exc
        finally:
            ended = self.now()
            self._in_flight -= len(jobs)
        self._settle(batch, jobs, results, error, ended)
        if self.reraise_interrupts and isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise error  # raised on the caller's loop: let it stop the program, jobs settled first

    def _settle(
        self,
        batch: Batch,
        jobs: list[Job[Any]],
        results: list[Any],
        error: BaseException | None,
        ended: float,
    ) -> None:
        try:
            if batch.futures is not None or batch.bulk is not None:  # items, run without Jobs
                self.outcomes.settle_items(batch, jobs, results, error)
            elif error is None:
                self.outcomes.settle(batch, jobs, results)
            else:
                self.outcomes.fail_batch(batch, jobs, error)
            self.recorder.record(batch, jobs, results, ended, error)
        except Exception as exc:  # a bug in a hook (an adapter, say): strand no job, stop nothing
            logger.exception("settling batch %s failed; failing its unsettled jobs", batch.id)
            to_jobs(batch, self.now())
            self.outcomes.fail_unsettled(batch.jobs, exc)
        finally:
            batch.settled = True

    def _items_run_as_they_are(self) -> bool:
        """Whether a batch of items can run without a Job made for each: nothing asks for one."""
        return self.takes_items and not any(map(self._emitter.listening, _JOB_EVENTS))

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        batch = self._tasks.pop(task)
        self._running -= 1
        if not batch.settled:
            to_jobs(batch, self.now())
            self._settle_unstarted(batch)
        if not self._closed:
            self._pump()

    def _settle_unstarted(self, batch: Batch) -> None:
        """A batch task that ended without settling: cancelled before its first step (shutdown
        gave up at once), or broken before it settled.  No job of it may be left hanging."""
        error = JobCancelledError("job abandoned at shutdown")
        if batch.running:
            self.outcomes.fail_unsettled(batch.jobs, error)
        else:  # none of its jobs ran or was counted out yet, cancelled handles included
            for job in batch.jobs:
                self.outcomes.fail_for_good(job, error)
        batch.settled = True

    def expect_deadlines(self) -> None:
        """A job with a deadline is on its way (any thread): batches look for late jobs from now on."""
        self.outcomes.deadlines = True
        if isinstance(self.buffer, AdaptiveBuffer):
            self.buffer.deadlines = True

    def shed_if_overloaded(self) -> None:
        """``shed=True``: raise ``OverloadedError`` if a job submitted now is predicted to miss the target.

        Callable from any thread: it reads counters and the controller's last decision only.
        """
        controller = self.controller
        if controller is None:
            return
        waiting = max(0, self.pending.count + self.inbox.backlog - self._in_flight)
        latency = controller.predicted_latency(waiting)
        if latency is None or latency <= controller.target:
            return
        controller.shed += 1
        raise OverloadedError(
            f"shed: a job submitted now would take about {latency * 1e3:.0f} ms ({waiting} jobs wait "
            f"ahead of it), over latency_target={controller.target * 1e3:g} ms"
        )

    def flush(self) -> None:
        """Dispatch the open batch now, without waiting for it to fill or for its interval (loop thread)."""
        if not self.buffer.draining:
            self.buffer.flush_now()

    def resize(self, batch_size: int | None = None, batch_interval: float | None = None) -> None:
        """Change ``batch_size`` and ``batch_interval`` from now on (loop thread)."""
        self.buffer.resize(batch_size, batch_interval)

    def is_processing_here(self) -> bool:
        """Whether the caller runs inside this engine's processor (where shutdown would deadlock)."""
        return self.runner.is_processing_here()

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self, timeout: float | None = None, cancel: bool = False) -> None:
        """Flush, finish (or with ``cancel``, abandon) every accepted job, then close.

        Any number of callers may wait here; each may end the wait sooner than the others,
        abandoning what is left: a second ``drain(timeout=...)`` or ``drain(cancel=True)``
        ends a graceful one that is stuck.
        """
        caller = asyncio.current_task()
        if caller is not None and self._emitter.is_handler_task(caller):  # an async handler shutting down
            self._emitter.awaiting_shutdown(caller)
        if self._drain_task is None:
            self._drain_task = self.loop.create_task(self._drain(timeout))
        if cancel:
            self.abandon("shutdown(cancel=True)")
        elif timeout is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._drain_task), timeout)
            except asyncio.TimeoutError:
                self.abandon(f"shutdown timed out after {timeout}s")
        await asyncio.shield(self._drain_task)

    async def _drain(self, timeout: float | None) -> None:
        deadline = None if timeout is None else self.loop.time() + timeout
        self.inbox.drain()  # jobs submitted before shutdown began are still admitted
        self.buffer.flush()
        self._emitter.emit("shutdown_started")
        await self._wait_until_idle()
        await self._finish_tasks()
        self._closed = True
        self.inbox.closed = True
        self.inbox.drain(refuse_submitted=True)
        await self._adapter.close()
        left = None if deadline is None else max(0.0, deadline - self.loop.time())
        await self._emitter.wait_for_handlers(left)
        self.runner.shutdown()
        self._emitter.emit("shutdown_completed")

    async def _wait_until_idle(self) -> None:
        while not await self.pending.idle(self.loop, 1.0):
            if self.pending.count and self.outcomes.abandoning and not self._tasks:
                # Everything was abandoned and nothing runs: what still counts can never finish.
                # (A count that reached 0 as the wait timed out is not that: look again.)
                logger.error(
                    "shutdown: %d jobs still counted as pending after abandoning", self.pending.count
                )
                return

    async def _finish_tasks(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            # Awaiting tasks that already finished does not yield (Python 3.12+): yield once,
            # so their done-callbacks (which forget them) run before we look again.
            await asyncio.sleep(0)

    def abandon(self, reason: str) -> None:
        """Give up on every unfinished job now: they fail with ``JobCancelledError``."""
        if self.outcomes.abandoning and not self._tasks and not self.pending.count:
            return
        self.outcomes.abandoning = True
        waiting = self.buffer.take_all() + self.outcomes.take_retrying() + self._adapter.abandon()
        running = sum(len(batch.jobs) for batch in self._tasks.values())  # dispatched, started or not
        if waiting or running:
            logger.warning(
                "%s: abandoning %d waiting and %d running jobs",
                reason,
                len(waiting),
                running,
                extra={"abandoned_waiting": len(waiting), "abandoned_running": running},
            )
        for job in waiting:
            self.outcomes.fail_for_good(job, JobCancelledError("job abandoned at shutdown"))
        for task in self._tasks:
            task.cancel()

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> Stats:
        """A consistent snapshot of the counters (call on the loop thread)."""
        counts = self.outcomes.counts
        finals = counts["completed"] + counts["failed"] + counts["cancelled"]
        triggers = self.buffer.triggers
        return Stats(
            submitted=self.pending.count + finals,
            **counts,
            pending=self.pending.count,
            buffered=self.buffer.buffered,
            in_flight=self._in_flight,
            retrying=self.outcomes.retrying,
            batches=sum(triggers.values()),
            batches_by_trigger=dict(triggers),
            policy=None if self.controller is None else self.controller.snapshot(),
            **self.recorder.summaries(),
        )
