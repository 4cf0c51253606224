"""The interfaces users implement, as in the original design: a queue and a batch processor.

A class needs only the methods named here; inheriting from these ABCs is optional (any
object with the methods works) but documents intent and lets type checkers help.
"""

from __future__ import annotations

import itertools
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ._claims import DeadLetter, Lease, Message, QueueCapabilities, QueueStats
from ._job import Job
from ._serialization import DEFAULT_MAX_PAYLOAD_BYTES, Serializer, encode, resolve_serializer

if TYPE_CHECKING:
    from ._engine import Adapter

__all__ = ["BatchProcessorInterface", "ClaimQueue", "QueueInterface"]

_KEY_PREFIX = f"{secrets.token_hex(6)}-{os.getpid()}-"
_key_counter = itertools.count(1)


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


class BatchProcessorInterface(ABC):
    """Processes a batch: returns one result per job, in order (sync or ``async def``).

    An ``Exception`` instance in a slot fails that job alone; raising fails the batch.
    """

    @abstractmethod
    def process_batch(self, jobs: list[Job[Any]]) -> Sequence[Any] | Awaitable[Sequence[Any]]:
        """Process ``jobs`` and return their results in the same order."""


class ClaimQueue(ABC):
    """A durable queue that consumers claim jobs from under a lease (SQLite, brokers).

    Every call works in bulk: ``enqueue`` stores many messages, ``claim`` leases up to
    ``limit`` ready jobs (counting an attempt on each, in the queue), ``ack``/``retry``/
    ``release``/``dead_letter`` settle many claimed jobs at once, each checked against the
    lease token in ``job.receipt`` (a :class:`Lease`).  ``capabilities`` declares what the
    queue promises; :mod:`microbatching.testing` checks each promise.  Hand an instance to
    a batcher and it is driven through this interface; ``encode`` runs at submit, so data
    that cannot be stored is refused before anything is.
    """

    capabilities: ClassVar[QueueCapabilities] = QueueCapabilities()

    def __init__(
        self,
        *,
        serializer: str | Serializer = "json",
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float = 30.0,
    ) -> None:
        if max_payload_bytes is not None and (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes < 1
        ):
            raise ValueError(f"max_payload_bytes must be a positive int or None, got {max_payload_bytes!r}")
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not 0 < lease < float("inf"):
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        self.serializer = resolve_serializer(serializer)
        self.max_payload_bytes = max_payload_bytes
        self.lease = float(lease)

    # -- encoding (concrete) ------------------------------------------------------------------

    def encode(self, job: Job[Any]) -> Message:
        """The message storing ``job``; raises ``SerializationError``/``PayloadTooLargeError``."""
        job_id, payload = encode(self.serializer, job.id, job.data, self.max_payload_bytes)
        return Message(f"{_KEY_PREFIX}{next(_key_counter)}", job_id, payload)

    def decode(self, lease: Lease, job_id: bytes, payload: bytes) -> Job[Any]:
        """The claimed job: decoded id and data, ``receipt=lease``, ``attempts`` as counted."""
        job: Job[Any] = Job(self.serializer.loads(job_id), self.serializer.loads(payload))
        job.receipt = lease
        job.attempts = lease.attempts
        return job

    def make_adapter(self) -> Adapter:
        """How a batcher drives this queue (claim loop, bulk acknowledgements)."""
        from ._durable import ClaimAdapter

        return ClaimAdapter(self)

    # -- the queue operations (abstract, all bulk) -------------------------------------------

    @abstractmethod
    async def enqueue(self, messages: Sequence[Message]) -> None:
        """Store ``messages`` durably, ready at once, in as few round trips as the queue allows."""

    @abstractmethod
    async def claim(self, limit: int, lease: float, max_attempts: int | None = None) -> list[Job[Any]]:
        """Lease up to ``limit`` ready jobs for ``lease`` seconds, oldest first.

        Each claim counts an attempt in the queue.  A job whose lease expired after its
        ``max_attempts``-th attempt goes to the dead-letter store instead (its consumer
        died or stalled every time).
        """

    @abstractmethod
    async def ack(self, jobs: Sequence[Job[Any]]) -> int:
        """Remove finished jobs still leased under their token; returns how many were."""

    @abstractmethod
    async def retry(self, jobs: Sequence[Job[Any]], delays: Sequence[float]) -> int:
        """End the leases; each job is ready again after its delay, its attempts kept."""

    @abstractmethod
    async def release(self, jobs: Sequence[Job[Any]]) -> int:
        """Give back jobs that were claimed but not attempted: ready now, the claim's attempt undone."""

    @abstractmethod
    async def dead_letter(self, failures: Sequence[tuple[Job[Any], str]]) -> int:
        """Move failed jobs (with their last error) into the dead-letter store."""

    @abstractmethod
    async def extend(self, jobs: Sequence[Job[Any]], lease: float) -> int:
        """Renew the leases of jobs still being worked on, for ``lease`` seconds from now."""

    @abstractmethod
    async def stats(self) -> QueueStats:
        """Counts of pending, delayed, in-flight, done and dead jobs, and the oldest age."""

    @abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""

    @abstractmethod
    async def requeue_dead(self, keys: Sequence[str] | None = None) -> int:
        """Put dead letters (all, or those keys) back in the queue with their attempts reset."""

    @abstractmethod
    async def purge_dead(self, keys: Sequence[str] | None = None) -> int:
        """Delete dead letters (all, or those keys)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections (idempotent); stored jobs stay stored."""
