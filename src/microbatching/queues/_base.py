"""The two queue interfaces: a push queue (``add``/``process``) and the durable ``ClaimQueue``.

``ClaimQueue`` is a template: its public methods run the guards every queue needs (a
closed queue, empty input, receipts that are leases of this queue, leases from before a
reconnect, one delay per job, encoding and per-row decoding, the client's errors
translated with the original chained), then call the queue's primitives (``_enqueue``,
``_claim``, ``_ack``, ...), which speak to the broker and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import secrets
import time
import traceback as tb
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from .._job import Job
from .._validate import positive_int, seconds
from ..errors import JobFailedError, MicroBatchingError, QueueError
from ._portal import Portal
from ._registry import redact, scrub
from ._serialization import DEFAULT_MAX_PAYLOAD_BYTES, Serializer, encode, resolve_serializer
from ._types import (
    Claimed,
    DeadLetter,
    Lease,
    Message,
    QueueCapabilities,
    QueueStats,
    StoredDeadLetter,
    WorkerInfo,
)

__all__ = ["ClaimQueue", "QueueInterface", "cancelled_here", "describe_failure"]

T = TypeVar("T")

_KEY_PREFIX = f"{secrets.token_hex(6)}-{os.getpid()}-"
_key_counter = itertools.count(1)


def _new_key_prefix_after_fork() -> None:
    # Message keys must stay unique across processes: a forked child takes its own prefix.
    global _KEY_PREFIX, _key_counter
    _KEY_PREFIX = f"{secrets.token_hex(6)}-{os.getpid()}-"
    _key_counter = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_key_prefix_after_fork)
# claim(wait=) on a queue that cannot block on the broker polls, backing off to this.
_FIRST_POLL = 0.002
_LAST_POLL = 0.1


class QueueInterface(ABC):
    """A queue the batcher puts jobs into and takes them from.

    ``add(job)`` stores a job (sync, or ``async def``); ``process(callback)`` registers the
    function the queue calls with each job it delivers.  The callback may be called from
    any thread.  ``process`` must return promptly: a queue that consumes in a loop should
    return a coroutine (run as a task, cancelled at shutdown) or run its own thread.
    """

    @abstractmethod
    def add(self, job: Job[Any]) -> Any:
        """Store ``job`` for delivery."""

    @abstractmethod
    def process(self, callback: Callable[[Job[Any]], Any]) -> Any:
        """Deliver every job, now and later, to ``callback``."""


def describe_failure(error: BaseException | str) -> tuple[str, str | None]:
    """The one-line error and the formatted traceback a dead letter keeps for ``error``."""
    if isinstance(error, str):
        return error, None
    cause = error.cause if isinstance(error, JobFailedError) else error
    line = f"{type(cause).__name__}: {cause}"
    if cause.__traceback__ is None:
        return line, None
    return line, "".join(tb.format_exception(type(cause), cause, cause.__traceback__))


class ClaimQueue(ABC):
    """A durable queue that consumers claim jobs from under a lease (SQLite, brokers).

    Every call works in bulk: ``enqueue`` stores many messages, ``claim`` leases up to
    ``limit`` ready jobs (counting an attempt on each, in the queue), ``ack``/``retry``/
    ``release``/``dead_letter``/``extend`` settle many claimed jobs at once, each checked
    against the lease in ``job.receipt``.  ``capabilities`` declares what the queue
    promises; :mod:`microbatching.testing` checks each promise.  Hand an instance to a
    batcher and it is driven through this interface; ``encode`` runs at submit, so data
    that cannot be stored is refused before anything is.

    Producers that only enqueue use ``put``/``put_many`` (sync, from any thread) or
    ``await aput``/``aput_many``.

    A queue implements the primitives (``_enqueue``, ``_claim``, ``_ack``, ``_retry``,
    ``_release``, ``_dead_letter``, ``_extend``, ``_stats``, ``_dead_letters``,
    ``_requeue_dead``, ``_purge_dead``, ``_drop``, ``_close``, ``_clone``); each receives
    validated, non-empty input and returns what the broker did.  Optional primitives
    (``_heartbeat``, ``_forget_worker``, ``_workers``) keep a list of live workers; by
    default a queue does not track them.  With ``create=False``
    a queue creates nothing: a missing queue raises
    :class:`~microbatching.errors.InvalidQueueError` (read-only commands use this).
    """

    capabilities: ClassVar[QueueCapabilities] = QueueCapabilities()
    #: The client library's exceptions: raised by a primitive, they reach callers as
    #: :class:`~microbatching.errors.QueueError`, the original chained.
    client_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Where the queue lives, for messages (credentials are redacted in every message).
    url: str = ""
    #: How many jobs a batcher on this queue holds accepted but not yet stored: a submit
    #: (``MicroBatching.submit_job``, ``await AsyncMicroBatching.submit_job``) waits while
    #: this many are unwritten, so a crash of the submitting process loses at most these.
    max_unstored: int = 1000
    #: How many messages one ``enqueue`` call stores all-or-none: ``None`` for any number
    #: (one transaction).  A queue that can promise it only up to some count says so (1 if
    #: each message is stored on its own); bulk producers such as ``microbatching enqueue``
    #: then send chunks of that size, so a failure midway can say exactly what was stored.
    atomic_enqueue_limit: ClassVar[int | None] = None

    def __init__(
        self,
        *,
        serializer: str | Serializer = "json",
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float = 30.0,
        create: bool = True,
    ) -> None:
        if max_payload_bytes is not None:
            try:
                positive_int("max_payload_bytes", max_payload_bytes)
            except TypeError as exc:
                raise ValueError(f"{exc} (or None)") from None
        self.serializer = resolve_serializer(serializer)
        self.max_payload_bytes = max_payload_bytes
        self.lease = _seconds("lease", lease, positive=True)
        self.create = bool(create)
        self._closed = False
        #: Bumped by a queue whose deliveries die with their connection, on each reconnect.
        self._epoch = 0
        self._portal: Portal | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {redact(self.url)!r}>"

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, job: Job[Any], *, delay: float = 0.0, key: str | None = None) -> Message:
        """The message storing ``job``; raises ``SerializationError``/``PayloadTooLargeError``.

        Without ``key`` the message is unique; ``put(id=...)`` passes one derived from the
        id, so a second put of that id while the first is unfinished stores nothing.
        """
        job_id, payload = encode(self.serializer, job.id, job.data, self.max_payload_bytes)
        return Message(key or f"{_KEY_PREFIX}{next(_key_counter)}", job_id, payload, delay)

    def decode(self, claimed: Claimed) -> Job[Any]:
        """The claimed job: decoded id and data, ``receipt`` its lease, ``attempts`` as counted."""
        job: Job[Any] = Job(self.serializer.loads(claimed.job_id), self.serializer.loads(claimed.payload))
        job.receipt = claimed.lease
        job.attempts = claimed.lease.attempts
        return job

    # -- producing -----------------------------------------------------------------------------

    async def aput(self, data: Any, *, id: Any = None, delay: float = 0.0) -> Any:
        """Store one job for the workers; returns its id (generated when not given).

        With ``id``, a job with that id still queued or in flight is not stored again
        (on queues that declare ``idempotent_enqueue``): the call returns the same id.
        ``delay`` holds the job back that many seconds.
        """
        (job_id,) = await self.aput_many([data], ids=None if id is None else [id], delay=delay)
        return job_id

    async def aput_many(
        self, items: Iterable[Any], *, ids: Sequence[Any] | None = None, delay: float = 0.0
    ) -> list[Any]:
        """Store many jobs in one round trip (all or none); returns their ids, in order."""
        job_ids, messages = self.encode_many(items, ids=ids, delay=delay)
        await self.enqueue(messages)
        return job_ids

    def encode_many(
        self, items: Iterable[Any], *, ids: Sequence[Any] | None = None, delay: float = 0.0
    ) -> tuple[list[Any], list[Message]]:
        """The job ids and the messages ``put_many(items, ids=, delay=)`` stores (nothing is stored).

        For a queue that can also store messages another way (on a connection its caller
        holds, say): the ids are generated and the keys derived exactly as ``put_many`` does.
        """
        data = list(items)
        if ids is not None and len(ids) != len(data):
            raise ValueError(f"put_many() needs one id per item: {len(data)} items, {len(ids)} ids")
        delay = _seconds("delay", delay)
        jobs = [Job(None if ids is None else ids[i], value) for i, value in enumerate(data)]
        messages = [self.encode(job, delay=delay, key=_id_key(job, ids is not None)) for job in jobs]
        return [job.id for job in jobs], messages

    def put(self, data: Any, *, id: Any = None, delay: float = 0.0) -> Any:
        """``aput`` for synchronous code (a Django view, a script): blocks until stored."""
        return self._blocking(lambda queue: queue.aput(data, id=id, delay=delay))

    def put_many(
        self, items: Iterable[Any], *, ids: Sequence[Any] | None = None, delay: float = 0.0
    ) -> list[Any]:
        """``aput_many`` for synchronous code: blocks until every job is stored."""
        values = list(items)
        return self._blocking(lambda queue: queue.aput_many(values, ids=ids, delay=delay))

    def _blocking(self, call: Callable[[ClaimQueue], Awaitable[T]]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                f"{type(self).__name__}.put() blocks; in async code use `await queue.aput(...)`"
            )
        self._check_open()
        if self._portal is None:
            self._portal = Portal(self._clone())
        return self._portal.call(call)

    def __enter__(self) -> ClaimQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_blocking()

    def close_blocking(self) -> None:
        """Release what ``put`` opened (its connection and thread), from synchronous code."""
        if self._portal is not None:
            portal, self._portal = self._portal, None
            portal.close()

    # -- the operations, guarded (the batcher and admin tools call these) ----------------------

    async def enqueue(self, messages: Sequence[Message]) -> int:
        """Store ``messages`` durably in as few round trips as the queue allows; returns how many were new."""
        self._check_open()
        if not messages:
            return 0
        if not self.capabilities.delayed_enqueue and any(m.delay > 0 for m in messages):
            raise ValueError(f"{type(self).__name__} cannot hold a job back at enqueue (delay=)")
        return await self._call(self._enqueue(list(messages)))

    async def claim(
        self, limit: int, lease: float | None = None, max_attempts: int | None = None, *, wait: float = 0.0
    ) -> list[Job[Any]]:
        """Lease up to ``limit`` ready jobs for ``lease`` seconds (the queue's own by default), oldest first.

        Each claim counts an attempt in the queue.  A job whose lease expired after its
        ``max_attempts``-th attempt goes to the dead-letter store instead (its consumer
        died or stalled every time).  With ``wait``, waits up to that many seconds for a
        job when none is ready.  A job whose stored data cannot be decoded goes to the
        dead letters alone, with its decode error.
        """
        self._check_open()
        if limit < 1:
            return []
        lease = self.lease if lease is None else _seconds("lease", lease, positive=True)
        wait = _seconds("wait", wait)
        if self.capabilities.blocking_claim or wait == 0:
            rows = await self._call(self._claim(limit, lease, max_attempts, wait))
        else:
            rows = await self._poll_claim(limit, lease, max_attempts, wait)
        return await self._decoded(rows)

    async def _poll_claim(
        self, limit: int, lease: float, max_attempts: int | None, wait: float
    ) -> list[Claimed]:
        deadline = time.monotonic() + wait
        pause = _FIRST_POLL
        while True:
            rows = await self._call(self._claim(limit, lease, max_attempts, 0.0))
            left = deadline - time.monotonic()
            if rows or left <= 0:
                return rows
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _LAST_POLL)

    async def _decoded(self, rows: list[Claimed]) -> list[Job[Any]]:
        jobs: list[Job[Any]] = []
        undecodable: list[tuple[Lease, str, str | None]] = []
        for row in rows:
            try:
                jobs.append(self.decode(row))
            except Exception as exc:
                error = (
                    f"SerializationError: the stored job cannot be decoded as {self.serializer.name}: {exc}"
                )
                undecodable.append((row.lease, error, None))
        if undecodable:
            await self._call(self._dead_letter(undecodable))
        return jobs

    async def ack(self, jobs: Sequence[Job[Any]]) -> int:
        """Remove finished jobs still leased under their token; returns how many were."""
        leases = self._leases(jobs)
        return await self._call(self._ack(leases)) if leases else 0

    async def retry(self, jobs: Sequence[Job[Any]], delays: Sequence[float]) -> int:
        """End the leases; each job is ready again after its delay, its attempts kept."""
        if len(delays) != len(jobs):
            raise ValueError(f"retry() needs one delay per job: {len(jobs)} jobs, {len(delays)} delays")
        checked = [_seconds("delay", delay) for delay in delays]
        pairs = [(job.receipt, delay) for job, delay in zip(jobs, checked, strict=True) if self._is_live(job)]
        if not pairs:
            return 0
        return await self._call(self._retry([lease for lease, _ in pairs], [delay for _, delay in pairs]))

    async def release(self, jobs: Sequence[Job[Any]]) -> int:
        """Give back jobs claimed but not attempted: ready now, the attempt undone where the broker can."""
        leases = self._leases(jobs)
        return await self._call(self._release(leases)) if leases else 0

    async def dead_letter(self, failures: Sequence[tuple[Job[Any], BaseException | str]]) -> int:
        """Move failed jobs into the dead-letter store with their last error (and its traceback)."""
        entries = [(job.receipt, *describe_failure(error)) for job, error in failures if self._is_live(job)]
        return await self._call(self._dead_letter(entries)) if entries else 0

    async def extend(self, jobs: Sequence[Job[Any]], lease: float | None = None) -> int:
        """Renew the leases of jobs still being worked on, for ``lease`` seconds from now."""
        lease = self.lease if lease is None else _seconds("lease", lease, positive=True)
        leases = self._leases(jobs)
        return await self._call(self._extend(leases, lease)) if leases else 0

    async def stats(self) -> QueueStats:
        """Counts of pending, delayed, in-flight, done and dead jobs, and the oldest age."""
        self._check_open()
        return await self._call(self._stats())

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters, decoded (data that cannot be is shown as its bytes)."""
        self._check_open()
        if limit < 1:
            return []
        stored = await self._call(self._dead_letters(limit))
        return [
            DeadLetter(d.key, self._loads(d.job_id), self._loads(d.payload), d.attempts, d.error,
                       d.failed_at, d.traceback)
            for d in stored
        ]  # fmt: skip

    async def requeue_dead(self, keys: Sequence[str] | None = None) -> int:
        """Put dead letters (all, or those keys) back in the queue with their attempts reset."""
        self._check_open()
        if keys is not None and not keys:
            return 0
        return await self._call(self._requeue_dead(None if keys is None else list(keys)))

    async def purge_dead(self, keys: Sequence[str] | None = None) -> int:
        """Delete dead letters (all, or those keys)."""
        self._check_open()
        if keys is not None and not keys:
            return 0
        return await self._call(self._purge_dead(None if keys is None else list(keys)))

    # -- live workers (optional: a queue that does not track them keeps the defaults) -----------

    async def heartbeat(self, worker: WorkerInfo) -> bool:
        """Record that ``worker`` is alive, with its figures; ``False`` if the queue does not track workers.

        A worker calls this every few seconds while it runs, and ``forget_worker`` when it
        stops; ``workers()`` lists those seen lately (``microbatching stats`` shows them).
        """
        self._check_open()
        return await self._call(self._heartbeat(worker))

    async def forget_worker(self, worker_id: str) -> None:
        """Remove a stopped worker from the list (nothing if the queue does not track workers)."""
        self._check_open()
        await self._call(self._forget_worker(worker_id))

    async def workers(self, max_age: float = 30.0) -> list[WorkerInfo] | None:
        """Workers whose last heartbeat is at most ``max_age`` seconds old, oldest first;
        ``None`` when the queue does not track workers."""
        self._check_open()
        return await self._call(self._workers(_seconds("max_age", max_age)))

    async def drop(self) -> None:
        """Delete the queue from the broker: its jobs, dead letters and everything it created."""
        self._check_open()
        await self._call(self._drop())

    async def close(self) -> None:
        """Release connections (idempotent); stored jobs stay stored."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._portal is not None:
                portal, self._portal = self._portal, None
                await asyncio.get_running_loop().run_in_executor(None, portal.close)
        finally:
            await self._call(self._close())

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    # -- guards ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MicroBatchingError(f"{self!r} is closed")

    def _is_live(self, job: Job[Any]) -> bool:
        """Whether ``job`` holds a lease of this queue taken on the current connection."""
        self._check_open()
        lease = job.receipt
        if not isinstance(lease, Lease):
            raise ValueError(
                f"{job!r} was not claimed from a {type(self).__name__} (its receipt is {lease!r})"
            )
        return lease.epoch == self._epoch

    def _leases(self, jobs: Sequence[Job[Any]]) -> list[Lease]:
        return [job.receipt for job in jobs if self._is_live(job)]

    async def _call(self, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except self.client_errors as exc:
            raise QueueError(scrub(f"{self!r}: {type(exc).__name__}: {exc}", self.url)) from exc
        except asyncio.CancelledError:
            # A client that gives a connection up may cancel the calls on it (aiormq does):
            # that is its error, not a cancellation of the caller, which it would end.
            if cancelled_here():
                raise
            abandoned = f"{self!r}: the client abandoned the operation (its connection closed)"
            raise QueueError(scrub(abandoned, self.url)) from None

    def _loads(self, data: bytes) -> Any:
        try:
            return self.serializer.loads(data)
        except Exception:
            return data

    # -- the primitives (one queue implements these) ----------------------------------------

    @abstractmethod
    async def _enqueue(self, messages: list[Message]) -> int:
        """Store the messages (all or none); returns how many were new."""

    @abstractmethod
    async def _claim(self, limit: int, lease: float, max_attempts: int | None, wait: float) -> list[Claimed]:
        """Lease up to ``limit`` ready messages; with ``wait`` (blocking queues only) wait for one."""

    @abstractmethod
    async def _ack(self, leases: list[Lease]) -> int:
        """Remove the messages still held under these leases."""

    @abstractmethod
    async def _retry(self, leases: list[Lease], delays: list[float]) -> int:
        """End the leases; each message is ready again after its delay."""

    @abstractmethod
    async def _release(self, leases: list[Lease]) -> int:
        """End the leases; the messages are ready now, the claim's attempt undone if the broker can."""

    @abstractmethod
    async def _dead_letter(self, entries: list[tuple[Lease, str, str | None]]) -> int:
        """Move the messages into the dead-letter store with (error, traceback)."""

    @abstractmethod
    async def _extend(self, leases: list[Lease], lease: float) -> int:
        """Renew the leases for ``lease`` seconds from now."""

    @abstractmethod
    async def _stats(self) -> QueueStats:
        """The queue's counts."""

    @abstractmethod
    async def _dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        """The oldest ``limit`` dead letters, still encoded."""

    @abstractmethod
    async def _requeue_dead(self, keys: list[str] | None) -> int:
        """Move dead letters back into the queue, attempts reset."""

    @abstractmethod
    async def _purge_dead(self, keys: list[str] | None) -> int:
        """Delete dead letters."""

    async def _heartbeat(self, worker: WorkerInfo) -> bool:
        """Store ``worker``'s row (optional; the default: workers are not tracked)."""
        return False

    async def _forget_worker(self, worker_id: str) -> None:
        """Delete the worker's row (optional; the default has none to delete)."""
        return None

    async def _workers(self, max_age: float) -> list[WorkerInfo] | None:
        """The workers seen within ``max_age`` seconds (optional; ``None``: not tracked)."""
        return None

    @abstractmethod
    async def _drop(self) -> None:
        """Delete everything this queue created on the broker."""

    @abstractmethod
    async def _close(self) -> None:
        """Release connections and threads."""

    @abstractmethod
    def _clone(self) -> ClaimQueue:
        """A new, unopened handle on the same queue with the same options (for ``put``)."""


def _seconds(name: str, value: object, *, positive: bool = False) -> float:
    try:
        return seconds(name, value, allow_zero=not positive)
    except TypeError as exc:  # queue options are values: one kind of error for a bad one
        raise ValueError(str(exc)) from None


def cancelled_here() -> bool:
    """Whether the running task was asked to cancel.  Before Python 3.11 a task cannot tell,
    and every cancellation is taken for its own."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


def _id_key(job: Job[Any], given: bool) -> str | None:
    """The message key of a job put with an explicit id: the same id gives the same key."""
    if not given:
        return None
    return "id-" + hashlib.sha256(repr((type(job.id).__name__, job.id)).encode()).hexdigest()[:32]
