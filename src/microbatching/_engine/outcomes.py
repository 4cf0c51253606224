"""Outcomes: a batch's results to its jobs' handles, the retry decision, and the counters.

Every job leaves here exactly once: completed, failed for good, cancelled, or handed to a
durable queue for later (``release``), and each way out tells :class:`Pending`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import operator
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

from .._batch import Batch
from .._job import Job, JobResult, set_results
from ..errors import DeadlineExceededError, JobCancelledError, JobFailedError, ShutdownError
from .items import job_for_slot
from .pending import Pending

if TYPE_CHECKING:
    from .._events import EventEmitter
    from .._retry import RetryPolicy
    from ..adapters.base import Adapter

__all__ = ["Outcomes"]

logger = logging.getLogger("microbatching")

_ALREADY_SETTLED = (asyncio.InvalidStateError, concurrent.futures.InvalidStateError)
#: Errors a job fails with as they are (not wrapped in JobFailedError): it never ran, or was abandoned.
_FINAL_AS_IS = (JobCancelledError, ShutdownError, DeadlineExceededError)
#: The state of an unsettled handle, as asyncio's, concurrent.futures' and our handles name it.
_PENDING = "PENDING"
#: A handle's state without a method call (``done()`` is ``_state != "PENDING"``).
_state_of = operator.attrgetter("_state")


class Outcomes:
    """Settles jobs and keeps the outcome counters."""

    def __init__(
        self, retry: RetryPolicy | None, emitter: EventEmitter, adapter: Adapter, pending: Pending
    ) -> None:
        self._retry = retry
        self._emitter = emitter
        self._adapter = adapter
        self._pending = pending
        self._retries: dict[Job[Any], asyncio.TimerHandle] = {}
        self.counts = {
            "completed": 0,
            "failed": 0,
            "retried": 0,
            "cancelled": 0,
            "processor_errors": 0,
            "deadline_exceeded": 0,
        }
        #: Some job was submitted with a deadline: batches look for late jobs as they start
        #: (until then they skip the look, so jobs without deadlines pay nothing for it).
        self.deadlines = False
        #: Shutdown gave up: failed jobs are not retried, they are cancelled.
        self.abandoning = False
        #: Fail jobs with JobFailedError (cause, attempts); the decorator turns it off to
        #: raise the processor's own error, as a plain function call would.
        self.wrap_errors = True

    def bind(self, loop: asyncio.AbstractEventLoop, now: Callable[[], float]) -> None:
        self._loop = loop
        self._now = now

    # -- a batch starts ----------------------------------------------------------------------

    def start_attempts(self, batch: Batch) -> list[Job[Any]]:
        """Count the attempt of each job; drop the ones whose handle was cancelled meanwhile."""
        live = batch.jobs
        dropped = False
        for job in live:
            handle = job._handle
            # done(), read as the state every handle type keeps (a method call costs more here)
            if handle is not None and handle._state != _PENDING:
                dropped = True
            job.attempts += 1
        if dropped:  # events and the processor see only the jobs that run
            live = batch.jobs = [job for job in live if not self._dropped_if_cancelled(job)]
        if self.deadlines:
            live = batch.jobs = self._drop_late(live)
        return live

    def _drop_late(self, jobs: list[Job[Any]]) -> list[Job[Any]]:
        """Fail the jobs whose deadline has passed (they never run); the others, in order."""
        now = self._now()
        kept = []
        for job in jobs:
            deadline = job.deadline
            if deadline is None or now < deadline:
                kept.append(job)
                continue
            job.attempts -= 1  # counted above, but never started
            self.fail_late(job, f"its deadline passed {now - deadline:.3f}s before its batch started")
        return kept

    def fail_late(self, job: Job[Any], why: str, cause: BaseException | None = None) -> None:
        """Fail ``job`` for good with ``DeadlineExceededError`` (``why``: what made it late)."""
        error = DeadlineExceededError(f"job {job.id!r} was not run: {why}")
        error.__cause__ = cause
        self.counts["deadline_exceeded"] += 1
        self.fail_for_good(job, error)

    def _dropped_if_cancelled(self, job: Job[Any]) -> bool:
        handle = job._handle
        if handle is None or not handle.done():
            return False
        job.attempts -= 1  # counted above, but never started
        self.counts["cancelled"] += 1
        error = JobCancelledError("job cancelled by its submitter")
        self._emit_failed(job, error)
        self._finalize(job, error)
        job._handle = None  # out of the batcher: the Job may be submitted again
        return True

    def start_items(self, batch: Batch) -> list[Any]:
        """A batch of items starts: drop the ones whose future was cancelled meanwhile."""
        futures = batch.futures
        # any(f.done() for f in futures), in C: a bound method per future would cost more
        if futures is not None and list(map(_state_of, futures)).count(_PENDING) != len(futures):
            self._drop_cancelled_items(batch)
        return batch.jobs

    def _drop_cancelled_items(self, batch: Batch) -> None:
        futures = batch.futures or []
        kept = [(item, f) for item, f in zip(batch.jobs, futures, strict=True) if not f.done()]
        dropped = len(futures) - len(kept)
        self.counts["cancelled"] += dropped
        self._pending.done(dropped)
        batch.jobs = [item for item, _ in kept]
        batch.futures = [f for _, f in kept]

    # -- a batch ends ------------------------------------------------------------------------

    def settle_items(
        self, batch: Batch, items: list[Any], results: Sequence[Any], error: BaseException | None
    ) -> None:
        """A batch of items ended: results to their futures (or ``submit_many``'s list), failures retried."""
        failed: list[tuple[int, BaseException]]
        if error is not None:
            self.counts["processor_errors"] += 1
            failed = [(slot, error) for slot in range(len(items))]
        elif batch.bulk is not None:
            failed = [(slot, r) for slot, r in enumerate(results) if isinstance(r, Exception)]
            if not failed:
                batch.bulk.fill(batch.offset, results)
            else:
                for slot, result in enumerate(results):
                    if not isinstance(result, Exception):
                        batch.bulk.set(batch.offset + slot, result)
        elif not any(map(isinstance, results, repeat(Exception))):  # the common case, checked in C
            failed = []
            set_results(batch.futures or [], results)
        else:
            failed = []
            for slot, (future, result) in enumerate(zip(batch.futures or [], results, strict=True)):
                if isinstance(result, Exception):
                    failed.append((slot, result))
                    continue
                try:
                    future.set_result(result)
                except _ALREADY_SETTLED:
                    pass
        done = len(items) - len(failed)
        self.counts["completed"] += done
        self._pending.done(done)
        for slot, exc in failed:  # a failed item needs a Job: its attempts, its retry
            job = job_for_slot(batch, slot)
            job.attempts = 1
            self.fail_job(job, exc)

    def settle(self, batch: Batch, jobs: list[Job[Any]], results: Sequence[Any]) -> None:
        """Give each job its result; an ``Exception`` in a slot fails that job alone."""
        failed: list[tuple[Job[Any], Exception]] = []
        announce = self._emitter.listening("job_completed")
        if (
            not announce
            and jobs
            and type(jobs[0]._handle) is JobResult  # MicroBatching's handles: settled in one go
            and not any(map(isinstance, results, repeat(Exception)))
        ):
            set_results([job._handle for job in jobs], results)
            self._completed(batch, jobs, results, failed)
            return
        for job, result in zip(jobs, results, strict=True):
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
        self._completed(batch, jobs, results, failed)

    def _completed(
        self,
        batch: Batch,
        jobs: list[Job[Any]],
        results: Sequence[Any],
        failed: list[tuple[Job[Any], Exception]],
    ) -> None:
        """After the results went out: the batch event, the failed slots, the counts."""
        if self._emitter.listening("batch_completed"):
            self._emitter.emit("batch_completed", batch, results)
        for job, exc in failed:
            self.fail_job(job, exc)
        done = len(jobs) - len(failed)
        self.counts["completed"] += done
        if not self._adapter.settles:  # nothing to acknowledge: counted in one go
            self._pending.done(done)
            return
        for job, result in zip(jobs, results, strict=True):
            if not isinstance(result, Exception):
                self._finalize(job, None)

    def fail_batch(self, batch: Batch, jobs: list[Job[Any]], error: BaseException) -> None:
        """The processor raised (or timed out, or broke its contract): every job of the batch failed."""
        self.counts["processor_errors"] += 1
        if self._emitter.listening("batch_failed"):
            self._emitter.emit("batch_failed", batch, error)
        for job in jobs:
            self.fail_job(job, error)

    def fail_unsettled(self, jobs: list[Job[Any]], error: BaseException) -> None:
        """A bug while settling: fail for good whatever was left unsettled, so nobody hangs."""
        for job in jobs:
            handle = job._handle
            if handle is not None and not handle.done():
                try:
                    self.fail_for_good(job, error)
                except Exception:
                    logger.exception("could not fail %r", job)

    def fail_job(self, job: Job[Any], error: BaseException) -> None:
        """``job`` failed an attempt: retry it after its delay, or fail it for good."""
        handle = job._handle
        if self.abandoning or (handle is not None and handle.done()):
            self.fail_for_good(job, error)
            return
        delay = self._retry_delay(job, error)
        if delay is None:
            self.fail_for_good(job, error)
            return
        if self.deadlines and self._too_late_to_retry(job, delay, error):
            return
        self.counts["retried"] += 1
        if self._emitter.listening("job_retrying"):
            self._emitter.emit("job_retrying", job, error, delay)
        self._adapter.retry(job, delay)

    def _too_late_to_retry(self, job: Job[Any], delay: float, error: BaseException) -> bool:
        """Fail ``job`` now if its retry would start after its deadline (the retry's cause chained)."""
        deadline = job.deadline
        if deadline is None or self._now() + delay < deadline:
            return False
        why = f"attempt {job.attempts} failed and a retry in {delay:.3f}s would start after its deadline"
        self.fail_late(job, why, error)
        return True

    def _retry_delay(self, job: Job[Any], error: BaseException) -> float | None:
        """Seconds until ``job`` may try again, or ``None`` when it gets no more attempts."""
        policy = self._retry
        if policy is None:
            return None
        try:
            return policy.delay(job.attempts) if policy.should_retry(error, job.attempts) else None
        except Exception:  # a retry_on predicate that raises: no retry, but no stranded job
            logger.exception("the retry policy raised while judging %r; failing it for good", job)
            return None

    def fail_for_good(self, job: Job[Any], error: BaseException) -> None:
        """Give ``job`` its final failure now, without retrying."""
        if isinstance(error, _FINAL_AS_IS) or not self.wrap_errors:
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
        self.counts["cancelled" if isinstance(final, JobCancelledError) else "failed"] += 1
        self._emit_failed(job, final)
        self._finalize(job, final)

    def _emit_failed(self, job: Job[Any], error: BaseException) -> None:
        if self._emitter.listening("job_failed"):
            self._emitter.emit("job_failed", job, error)

    def _finalize(self, job: Job[Any], error: BaseException | None) -> None:
        self._adapter.finished(job, error)
        self._pending.done(1)

    # -- retries held in memory --------------------------------------------------------------

    def hold_for_retry(self, job: Job[Any], delay: float) -> None:
        """Keep ``job`` here for ``delay`` seconds, then hand it to the adapter's ``requeue``."""
        self._retries[job] = self._loop.call_later(delay, self._retry_ready, job)

    def _retry_ready(self, job: Job[Any]) -> None:
        del self._retries[job]
        job._ready_at = self._now()  # its age for the time trigger starts again now
        self._adapter.requeue(job)

    def take_retrying(self) -> list[Job[Any]]:
        """Stop every retry timer; returns the jobs that were waiting (shutdown gave up on them)."""
        jobs = list(self._retries)
        for timer in self._retries.values():
            timer.cancel()
        self._retries.clear()
        return jobs

    @property
    def retrying(self) -> int:
        """Jobs waiting out a retry delay in memory."""
        return len(self._retries)
