"""Driving a :class:`~microbatching.interfaces.ClaimQueue` from the engine.

Submitted jobs are encoded at submit (in the submitter's thread) and enqueued in bulk,
one call per loop tick.  A claim loop leases just enough jobs to keep the batches full
(``batch_size * (max_concurrent_batches + 1)`` held at most), renews their leases while
they are worked on, and settles outcomes in bulk: acknowledged on success, stored with
their delay on retry (so a crash loses nothing), dead-lettered on final failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from .._job import Job
from ..errors import JobCancelledError, QueueError
from ..queues._types import Lease, Message
from .base import Adapter

if TYPE_CHECKING:
    from ..queues._base import ClaimQueue

__all__ = ["ClaimAdapter"]

logger = logging.getLogger("microbatching")

_POLL_WAIT = 0.1  # seconds an idle claim polls a queue that cannot block on its broker
_BLOCKING_WAIT = 1.0  # seconds an idle claim waits on a broker that can block
_ERROR_BACKOFF = 0.5
_STILL_FAILING = 30.0  # seconds between the log lines of a claim that keeps failing
_FIRST_BACKOFF = 0.05  # the first pause before repeating a write the queue failed; doubles
_LAST_BACKOFF = 2.0
#: How long an enqueue the queue keeps failing is repeated before its jobs fail.
_ENQUEUE_PATIENCE = 30.0
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
        self._suspects: deque[Job[Any]] = deque()  # held until they can run alone
        self._isolating: str | None = None  # the key of the suspect running alone
        self._wants_isolation = False  # a suspect was given back: claim more once idle
        self._deferred: list[Job[Any]] = []  # held (not given back) while a suspect runs alone
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._troubled = False  # the queue is failing: said once in the log, until it works again
        self._claim_failures = 0  # claims failed in a row (the first is logged with its traceback)
        self._claim_failing_since = self._claim_reported = 0.0
        # Jobs encoded at submit and not yet stored (any thread counts in; the writer out).
        self._unstored = 0
        self._store_changed = threading.Condition()
        self._store_watchers: dict[str, concurrent.futures.Future[None]] = {}
        self._store_room: asyncio.Event | None = None
        self._closing = False

    # -- submitting ---------------------------------------------------------------------------

    def prepare(self, job: Job[Any]) -> None:
        """Encode ``job`` (raising ``SerializationError``/``PayloadTooLargeError``) before it is accepted."""
        job.receipt = self.queue.encode(job)
        with self._store_changed:
            self._unstored += 1

    def admit(self, job: Job[Any]) -> None:
        message = job.receipt
        job.receipt = None
        if not isinstance(message, Message):  # not encoded at submit (prepare was not called)
            try:
                message = self.queue.encode(job)
            except Exception as exc:
                self.engine.fail_for_good(job, exc)
                return
            with self._store_changed:
                self._unstored += 1
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
        options = self.engine.options
        target = options.batch_size * (options.max_concurrent_batches + 1)
        max_attempts = options.retry.max_attempts if options.retry is not None else 1
        # An idle claim waits on the broker for work (or polls, for queues that cannot);
        # shutdown waits at most this long for the claim in progress.
        idle_wait = _BLOCKING_WAIT if self.queue.capabilities.blocking_claim else _POLL_WAIT
        while True:
            try:
                if await self._claim_step(target, max_attempts, idle_wait):
                    break
            except Exception as exc:  # the loop outlives any failure: a dead one strands every job
                self._claim_failed(exc)
                await asyncio.sleep(_ERROR_BACKOFF)
        self._let_go_of_queued()

    async def _claim_step(self, target: int, max_attempts: int, idle_wait: float) -> bool:
        """One turn of the claim loop; ``True`` once a shutdown has nothing more to claim."""
        engine = self.engine
        draining = engine.draining
        if draining:
            self._release_suspects()
            await self._write_all()
            if not self._own_queued():
                return True
        elif (
            self._suspects
            or self._deferred
            or self._isolating is not None
            or (self._wants_isolation and self._held)
        ):
            await self._isolate_next()
            return False
        want = target - len(self._held)
        if want < min(engine.options.batch_size, target):
            await self._sleep(None)  # woken when held jobs are settled
            return False
        jobs = await self.queue.claim(want, None, max_attempts, wait=0.0 if draining else idle_wait)
        self._claim_works()
        own_seen = any(job.receipt.key in self._own for job in jobs)
        if not draining and any(_is_suspect(job) for job in jobs):
            jobs = self._isolate_suspects(jobs)
        for job in jobs:
            engine.deliver(job)
        # Draining: our remaining jobs are behind other work, delayed, or leased elsewhere.
        return draining and not own_seen

    def _claim_failed(self, error: Exception) -> None:
        """Log a failed claim: the first with its traceback, then a line every ``_STILL_FAILING`` s."""
        now = time.monotonic()
        if not self._claim_failures:
            logger.error("claiming jobs from %r failed; retrying every %ss", self.queue, _ERROR_BACKOFF,
                         exc_info=error)  # fmt: skip
            self._claim_failing_since = self._claim_reported = now
        elif now - self._claim_reported >= _STILL_FAILING:
            logger.error("claiming jobs from %r still fails after %d tries in %.0f s: %s", self.queue,
                         self._claim_failures + 1, now - self._claim_failing_since, error)  # fmt: skip
            self._claim_reported = now
        self._claim_failures += 1

    def _claim_works(self) -> None:
        if self._claim_failures:
            logger.warning("claiming jobs from %r works again after %d failed tries in %.0f s", self.queue,
                           self._claim_failures, time.monotonic() - self._claim_failing_since)  # fmt: skip
            self._claim_failures = 0

    async def _isolate_next(self) -> None:
        """Run suspects (jobs whose consumer died with them before) one per batch, alone.

        A job that crashes its worker would otherwise take its batch-mates' attempts with
        it, every time, until they were all dead-lettered together.
        """
        if self._isolating is None:
            waiting = len(self._suspects) + len(self._deferred)
            if self._suspects and len(self._held) == waiting:  # nothing else runs here
                self._run_alone(self._suspects.popleft())
            elif not self._suspects and self._deferred:
                deferred, self._deferred = self._deferred, []
                for job in deferred:
                    self._held.pop(job.receipt.key, None)
                    self.engine.deliver(job)
        await self._sleep(None)  # woken when jobs are settled

    def _isolate_suspects(self, jobs: list[Job[Any]]) -> list[Job[Any]]:
        """Sort a claim holding suspects; returns the jobs to deliver as usual.

        A suspect runs only when this worker holds nothing else, so that if it kills the
        worker it takes no other job's attempt with it.  Until then it is given back at
        once (its attempt undone, where the queue can): held here while other batches ran,
        it would be charged the attempt of a claim it never ran in, and buried unrun if
        the worker died meanwhile.  No more work is claimed until the worker is idle.
        """
        suspects = [job for job in jobs if _is_suspect(job)]
        others = [job for job in jobs if not _is_suspect(job)]
        if not self._held and self._isolating is None and not self._suspects:
            self._run_alone(suspects[0])
            self._give_back(others + suspects[1:])
            return []
        self._give_back(suspects)
        self._wants_isolation = True
        return others

    def _run_alone(self, job: Job[Any]) -> None:
        self._isolating = job.receipt.key
        self._wants_isolation = False
        self._held[job.receipt.key] = job
        self.engine.deliver(job)

    def _give_back(self, jobs: list[Job[Any]]) -> None:
        if not self.queue.capabilities.release_keeps_attempts:
            # Giving back would spend an attempt: hold them instead (leases renewed), the
            # suspects until each can run alone, the others until no suspect is left.
            for job in jobs:
                self._held[job.receipt.key] = job
                if _is_suspect(job):
                    self._suspects.append(job)
                else:
                    self._deferred.append(job)
            return
        self._releases.extend(jobs)
        if jobs:
            self._schedule_write()

    def _release_suspects(self) -> None:
        """Shutdown: what waits to run alone (or behind a suspect) goes back to the queue."""
        waiting = [*self._suspects, *self._deferred]
        self._suspects.clear()
        self._deferred = []
        for job in waiting:
            self._held.pop(job.receipt.key, None)
            self._releases.append(job)
        if waiting:
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
                try:  # safe to repeat: a message's key makes a second enqueue of it a no-op
                    await self._persist("enqueueing", partial(queue.enqueue, messages), _ENQUEUE_PATIENCE)
                except Exception as exc:
                    self._enqueue_failed(messages, exc)
                else:
                    self._stored(messages, None)
                self._wake.set()
            await self._settle("acknowledging", queue.ack, "_acks")
            if self._retries:
                retries, self._retries = self._retries, []
                jobs, delays = [job for job, _ in retries], [delay for _, delay in retries]
                await self._attempt("storing retries", partial(queue.retry, jobs, delays))
            await self._settle("releasing", queue.release, "_releases")
            if self._dead:
                dead, self._dead = self._dead, []
                await self._attempt("dead-lettering", partial(queue.dead_letter, dead))

    async def _settle(self, what: str, operation: Any, attribute: str) -> None:
        jobs: list[Job[Any]] = getattr(self, attribute)
        if jobs:
            setattr(self, attribute, [])
            await self._attempt(what, partial(operation, jobs))

    async def _attempt(self, what: str, operation: Callable[[], Awaitable[Any]]) -> None:
        try:
            # Settles are checked against the lease, so repeating one is safe; past the
            # lease the jobs come back by themselves anyway.
            await self._persist(what, operation, self.queue.lease)
        except Exception:
            logger.exception("%s jobs on %r failed; they will be redelivered", what, self.queue)

    async def _persist(self, what: str, operation: Callable[[], Awaitable[Any]], patience: float) -> None:
        """Run ``operation``, retrying with backoff for up to ``patience`` seconds while the queue fails.

        The queue's trouble is logged once when it starts and once when it ends, not per job.
        """
        deadline = time.monotonic() + patience
        pause = _FIRST_BACKOFF
        while True:
            try:
                await operation()
            except QueueError as exc:
                if time.monotonic() + pause > deadline:
                    raise
                if not self._troubled:
                    self._troubled = True
                    logger.warning("%s jobs on %r failed (%s); retrying with backoff", what, self.queue, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, _LAST_BACKOFF)
                continue
            if self._troubled:
                self._troubled = False
                logger.warning("%r works again", self.queue)
            return

    def _enqueue_failed(self, messages: list[Message], exc: Exception) -> None:
        logger.error("enqueueing %d jobs on %r failed: %s", len(messages), self.queue, exc)
        self._stored(messages, exc)
        for message in messages:
            own = self._own.pop(message.key, None)
            if own is not None:
                self.engine.fail_for_good(own.job, exc)

    # -- how much is accepted but not yet stored ----------------------------------------------

    def _stored(self, messages: list[Message], error: BaseException | None) -> None:
        """``messages`` reached the queue (or failed to): room for more, and their watchers told."""
        with self._store_changed:
            self._unstored -= len(messages)
            watchers = [self._store_watchers.pop(m.key, None) for m in messages if self._store_watchers]
            self._store_changed.notify_all()
        for watcher in watchers:
            if watcher is not None and not watcher.done():
                if error is None:
                    watcher.set_result(None)
                else:
                    watcher.set_exception(error)
        if self._store_room is not None and self._unstored < self.queue.max_unstored:
            self._store_room.set()

    def wait_for_store_room(self, timeout: float | None) -> bool:
        """Block (any thread but the loop's) while ``max_unstored`` accepted jobs are not yet stored."""
        limit = self.queue.max_unstored
        with self._store_changed:
            return self._store_changed.wait_for(lambda: self._unstored < limit or self._closing, timeout)

    def has_store_room(self) -> bool:
        return self._unstored < self.queue.max_unstored

    async def store_room(self) -> None:
        """Wait (on the loop) while ``max_unstored`` accepted jobs are not yet stored."""
        while self._unstored >= self.queue.max_unstored and not self._closing:
            if self._store_room is None:
                self._store_room = asyncio.Event()
            self._store_room.clear()
            await self._store_room.wait()

    def watch_stored(self, job: Job[Any]) -> concurrent.futures.Future[None]:
        """A future that resolves once ``job`` (encoded by ``prepare``) is stored in the queue."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        message = job.receipt
        if not isinstance(message, Message):
            raise RuntimeError("watch_stored() needs a job encoded by prepare()")
        with self._store_changed:
            self._store_watchers[message.key] = future
        return future

    async def _write_all(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def close(self) -> None:
        with self._store_changed:  # nobody waits for room any more
            self._closing = True
            self._store_changed.notify_all()
        if self._store_room is not None:
            self._store_room.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._release_suspects()
        await self._write_all()
        for own in self._own.values():
            self._fail_handle(own.job)
        self._own.clear()
        await self.queue.close()


def _is_suspect(job: Job[Any]) -> bool:
    return bool(job.receipt.recovered >= _SUSPECT_AFTER)
