"""Driving a :class:`~microbatching.interfaces.ClaimQueue` from the engine.

Submitted jobs are encoded at submit (in the submitter's thread) and enqueued in bulk,
one call per loop tick.  A claim loop leases just enough jobs to keep the batches full
(``batch_size * (max_concurrent_batches + 1)`` held at most), renews their leases while
they are worked on, and settles outcomes in bulk: acknowledged on success, stored with
their delay on retry (so a crash loses nothing), dead-lettered on final failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._job import Job
from ..errors import JobCancelledError
from ..queues._types import Lease, Message
from .base import Adapter

if TYPE_CHECKING:
    from ..queues._base import ClaimQueue

__all__ = ["ClaimAdapter"]

logger = logging.getLogger("microbatching")

_POLL_WAIT = 0.1  # seconds an idle claim polls a queue that cannot block on its broker
_BLOCKING_WAIT = 1.0  # seconds an idle claim waits on a broker that can block
_ERROR_BACKOFF = 0.5
#: A job whose lease ran out this many times (its consumer died or stalled with it) is
#: processed alone: it may be what kills the consumer.
_SUSPECT_AFTER = 2


@dataclass
class _Own:
    """A job submitted through this batcher, until this process sees its final outcome."""

    job: Job[Any]
    counted: bool = True  # counted in engine.pending (False once released for a retry)
    queued: bool = True  # in the queue, not claimed by this process


class ClaimAdapter(Adapter):
    """The engine's side of a claim queue: bulk enqueue, a claim loop, bulk settlement."""

    direct = False
    settles = True

    def __init__(self, queue: ClaimQueue) -> None:
        self.queue = queue
        self._own: dict[str, _Own] = {}
        self._held: dict[str, Job[Any]] = {}  # claimed here, not yet settled: leases to renew
        self._outbox: list[Message] = []
        self._acks: list[Job[Any]] = []
        self._retries: list[tuple[Job[Any], float]] = []
        self._releases: list[Job[Any]] = []
        self._dead: list[tuple[Job[Any], BaseException]] = []
        self._writer: asyncio.Task[None] | None = None
        self._suspects: deque[Job[Any]] = deque()
        self._isolating: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    # -- submitting ---------------------------------------------------------------------------

    def prepare(self, job: Job[Any]) -> None:
        """Encode ``job`` (raising ``SerializationError``/``PayloadTooLargeError``) before it is accepted."""
        job.receipt = self.queue.encode(job)

    def admit(self, job: Job[Any]) -> None:
        message = job.receipt
        job.receipt = None
        if not isinstance(message, Message):
            try:
                message = self.queue.encode(job)
            except Exception as exc:
                self.engine.fail_for_good(job, exc)
                return
        self._own[message.key] = _Own(job)
        self._outbox.append(message)
        self._schedule_write()

    # -- delivering -----------------------------------------------------------------------------

    def start(self) -> None:
        loop = self.engine.loop
        self._tasks = [loop.create_task(self._claim_loop()), loop.create_task(self._renew_leases())]

    def delivered(self, job: Job[Any]) -> tuple[Job[Any], bool]:
        lease: Lease = job.receipt
        self._held[lease.key] = job
        job.attempts = lease.attempts - 1  # the engine counts this attempt when the batch starts
        own = self._own.get(lease.key)
        if own is None:
            return job, False  # submitted elsewhere: it counts as pending here from now
        job._handle, job._submitted_at = own.job._handle, own.job._submitted_at
        own.job, own.queued = job, False
        counted, own.counted = own.counted, True  # a job released for a retry counts again
        return job, counted

    async def _claim_loop(self) -> None:
        engine, queue = self.engine, self.queue
        options = engine.options
        target = options.batch_size * (options.max_concurrent_batches + 1)
        max_attempts = options.retry.max_attempts if options.retry is not None else 1
        # An idle claim waits on the broker for work (or polls, for queues that cannot);
        # shutdown waits at most this long for the claim in progress.
        idle_wait = _BLOCKING_WAIT if queue.capabilities.blocking_claim else _POLL_WAIT
        while True:
            draining = engine.draining
            if draining:
                self._release_suspects()
                await self._write_all()
                if not self._own_queued():
                    break
            elif self._suspects or self._isolating is not None:
                await self._isolate_next()
                continue
            want = target - len(self._held)
            if want < min(options.batch_size, target):
                await self._sleep(None)  # woken when held jobs are settled
                continue
            try:
                jobs = await queue.claim(want, None, max_attempts, wait=0.0 if draining else idle_wait)
            except Exception:
                logger.exception("claiming jobs from %r failed; retrying in %ss", queue, _ERROR_BACKOFF)
                await asyncio.sleep(_ERROR_BACKOFF)
                continue
            own_seen = False
            for job in jobs:
                lease: Lease = job.receipt
                own_seen = own_seen or lease.key in self._own
                if lease.recovered >= _SUSPECT_AFTER and not draining:
                    self._park_suspect(job)
                else:
                    engine.deliver(job)
            if draining and not own_seen:
                break  # our remaining jobs are behind other work, delayed, or leased elsewhere
        self._let_go_of_queued()

    async def _isolate_next(self) -> None:
        """Run suspects (jobs whose consumer died with them before) one per batch, alone.

        A job that crashes its worker would otherwise take its batch-mates' attempts with
        it, every time, until they were all dead-lettered together.
        """
        if self._isolating is None and len(self._held) == len(self._suspects):  # nothing else here
            job = self._suspects.popleft()
            self._isolating = job.receipt.key
            self.engine.deliver(job)
        await self._sleep(None)  # woken when jobs are settled

    def _park_suspect(self, job: Job[Any]) -> None:
        # One suspect at a time: the others go straight back, their claim's attempt undone,
        # so a job crashing the worker while they wait costs them nothing.
        if self._suspects or self._isolating is not None:
            self._releases.append(job)
            self._schedule_write()
        else:
            self._held[job.receipt.key] = job  # its lease is renewed while it waits
            self._suspects.append(job)

    def _release_suspects(self) -> None:
        while self._suspects:
            job = self._suspects.popleft()
            self._held.pop(job.receipt.key, None)
            self._releases.append(job)
            self._schedule_write()

    async def _sleep(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    def _own_queued(self) -> bool:
        return any(own.queued and own.counted for own in self._own.values())

    def _let_go_of_queued(self) -> None:
        """At shutdown: our jobs still in the queue stay there; their handles say so."""
        for key, own in list(self._own.items()):
            if own.queued and own.counted:
                del self._own[key]
                self._fail_handle(own.job)
                self.engine.release(own.job)

    async def _renew_leases(self) -> None:
        queue = self.queue
        while True:
            await asyncio.sleep(queue.lease / 3)
            if self._held:
                try:
                    await queue.extend(list(self._held.values()))
                except Exception:
                    logger.exception("renewing leases on %r failed", queue)

    # -- outcomes ------------------------------------------------------------------------------

    def retry(self, job: Job[Any], delay: float) -> None:
        """Store the retry delay in the queue and end the lease; the job leaves this process."""
        lease: Lease = job.receipt
        self._settled(lease.key)
        own = self._own.get(lease.key)
        if own is not None:
            own.counted, own.queued = False, True
        self._retries.append((job, delay))
        self._schedule_write()
        self._wake.set()  # room to claim more
        self.engine.release(job)

    def finished(self, job: Job[Any], error: BaseException | None) -> None:
        lease = job.receipt
        if not isinstance(lease, Lease):  # never reached the queue (its enqueue failed)
            return
        self._settled(lease.key)
        self._own.pop(lease.key, None)
        if error is None:
            self._acks.append(job)
        elif isinstance(error, JobCancelledError):
            handle = job._handle
            if handle is not None and handle.cancelled():
                self._acks.append(job)  # its submitter cancelled it: drop it from the queue
            elif job.attempts < lease.attempts:
                self._releases.append(job)  # abandoned before its attempt started
            else:
                self._retries.append((job, 0.0))  # abandoned mid-attempt: the attempt counts
        else:
            self._dead.append((job, error))
        self._schedule_write()
        self._wake.set()  # room to claim more

    def _settled(self, key: str) -> None:
        self._held.pop(key, None)
        if key == self._isolating:
            self._isolating = None

    def abandon(self) -> list[Job[Any]]:
        self._let_go_of_queued()
        return []

    def _fail_handle(self, job: Job[Any]) -> None:
        handle = job._handle
        if handle is not None and not handle.done():
            handle.set_exception(
                JobCancelledError(
                    f"job {job.id!r} is still in the durable queue {self.queue!r}: this batcher shut down "
                    "before processing it to the end; a worker on that queue will process it"
                )
            )

    # -- bulk writes ---------------------------------------------------------------------------

    def _schedule_write(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = self.engine.loop.create_task(self._write())

    async def _write(self) -> None:
        # Everything gathered during one loop tick goes out together, one call per kind.
        queue = self.queue
        while self._outbox or self._acks or self._retries or self._releases or self._dead:
            if self._outbox:
                messages, self._outbox = self._outbox, []
                try:
                    await queue.enqueue(messages)
                except Exception as exc:
                    self._enqueue_failed(messages, exc)
                self._wake.set()
            await self._settle("acknowledging", queue.ack, "_acks")
            if self._retries:
                retries, self._retries = self._retries, []
                jobs, delays = [job for job, _ in retries], [delay for _, delay in retries]
                await self._attempt("storing retries", queue.retry(jobs, delays))
            await self._settle("releasing", queue.release, "_releases")
            if self._dead:
                dead, self._dead = self._dead, []
                await self._attempt("dead-lettering", queue.dead_letter(dead))

    async def _settle(self, what: str, operation: Any, attribute: str) -> None:
        jobs: list[Job[Any]] = getattr(self, attribute)
        if jobs:
            setattr(self, attribute, [])
            await self._attempt(what, operation(jobs))

    async def _attempt(self, what: str, operation: Any) -> None:
        try:
            await operation
        except Exception:
            # The leases run out and the jobs come back: at-least-once, nothing lost.
            logger.exception("%s jobs on %r failed; they will be redelivered", what, self.queue)

    def _enqueue_failed(self, messages: list[Message], exc: Exception) -> None:
        logger.error("enqueueing %d jobs on %r failed: %s", len(messages), self.queue, exc)
        for message in messages:
            own = self._own.pop(message.key, None)
            if own is not None:
                self.engine.fail_for_good(own.job, exc)

    async def _write_all(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._release_suspects()
        await self._write_all()
        for own in self._own.values():
            self._fail_handle(own.job)
        self._own.clear()
        await self.queue.close()
