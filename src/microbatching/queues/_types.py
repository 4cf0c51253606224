"""The value types of the claim-queue interface: messages, leases, capabilities, stats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "Claimed",
    "DeadLetter",
    "Lease",
    "Message",
    "QueueCapabilities",
    "QueueStats",
    "StoredDeadLetter",
    "WorkerInfo",
]


@dataclass(frozen=True)
class Message:
    """A job as it is handed to a queue's ``enqueue``: already encoded.

    ``key`` identifies the message: while a message with that key is queued and
    unfinished, an enqueue of the same key stores nothing (on queues that declare
    ``idempotent_enqueue``).  ``job_id`` and ``payload`` are the job's id and data,
    encoded; ``delay`` holds the job back that many seconds.
    """

    key: str
    job_id: bytes
    payload: bytes
    delay: float = 0.0


@dataclass(frozen=True)
class Lease:
    """What a claim puts into ``job.receipt``: which message, and proof of the current lease.

    ``token`` changes on every claim, so an acknowledgement from a consumer whose lease
    expired (and whose job was claimed again) is refused.  ``attempts`` counts the claims
    of the message, this one included; ``recovered`` how many earlier leases ended without
    an outcome (a consumer died or stalled).  ``ref`` is the queue's own handle on the
    message (a row id, a stream entry id, a delivery).  ``epoch`` is the connection the
    lease was taken on, for queues whose deliveries die with their connection: a settle
    of a lease from before a reconnect is refused, never sent on the new connection.
    """

    key: str
    token: str
    attempts: int
    recovered: int = 0
    ref: Any = None
    epoch: int = 0


@dataclass(frozen=True)
class Claimed:
    """A claimed message as a queue's ``_claim`` returns it: its lease and its encoded id and data."""

    lease: Lease
    job_id: bytes
    payload: bytes


@dataclass(frozen=True)
class QueueCapabilities:
    """What a queue promises; the conformance suite skips (saying why) the cases it does not claim.

    - ``durable``: jobs survive the queue being closed and reopened (and a crash).
    - ``shared``: several processes may consume one queue at once.
    - ``lease_expiry``: a claimed job comes back by itself when its lease runs out while
      its consumer is silent.
    - ``redelivery_on_disconnect``: a claimed job comes back when its consumer's
      connection closes (brokers without lease timeouts rely on this alone).
    - ``lease_tokens``: a settle under an expired lease cannot touch a job claimed again.
    - ``lease_per_claim``: ``claim(..., lease=)`` is honoured per claim; ``False``: every
      claim gets the queue's own ``lease`` (a broker setting per consumer).
    - ``extend_any_length``: ``extend(jobs, lease)`` renews for any length; ``False``: it
      renews one lease period from now, whatever is asked.
    - ``release_keeps_attempts``: ``release`` undoes the claim's attempt; ``False``: the
      broker counts every delivery, so a release spends an attempt.
    - ``delayed_retry``: ``retry(jobs, delays)`` keeps the job back for its delay.
    - ``delayed_enqueue``: a message's ``delay`` is honoured at enqueue.
    - ``dead_letters``: failed jobs are kept, listable, requeueable and purgeable.
    - ``idempotent_enqueue``: an enqueue of a key already queued and unfinished stores nothing.
    - ``exact_counts``: settle counts and ``QueueStats.done`` are exact.
    - ``blocking_claim``: ``claim(..., wait=)`` waits on the broker for work; otherwise the
      queue polls until the wait is over.
    """

    durable: bool = True
    shared: bool = True
    lease_expiry: bool = True
    redelivery_on_disconnect: bool = False
    lease_tokens: bool = True
    lease_per_claim: bool = True
    extend_any_length: bool = True
    release_keeps_attempts: bool = True
    delayed_retry: bool = True
    delayed_enqueue: bool = True
    dead_letters: bool = True
    idempotent_enqueue: bool = True
    exact_counts: bool = True
    blocking_claim: bool = False


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of a claim queue.

    Jobs ``pending`` (ready now), ``delayed`` (waiting out a delay), ``in_flight``
    (leased), ``done`` (acknowledged, ever), ``dead`` (in the dead-letter store), and
    ``oldest_age`` (seconds since the oldest unfinished job was enqueued).  A count the
    broker cannot tell is ``None`` (plain AMQP knows ready counts only, say); so is
    ``oldest_age`` when there is no unfinished job or no way to know.
    """

    pending: int | None
    delayed: int | None
    in_flight: int | None
    done: int | None
    dead: int | None
    oldest_age: float | None

    @property
    def empty(self) -> bool:
        """Whether no job is known to be pending, delayed or in flight (unknown counts are ignored)."""
        return not any(count for count in (self.pending, self.delayed, self.in_flight))


@dataclass(frozen=True)
class DeadLetter:
    """A job that failed for good: its data, attempts, last error and its traceback.

    ``error`` is one line (``"ValueError: bad record 7"``), ``traceback`` the formatted
    traceback of that error when it was raised in a processor (``None`` otherwise),
    ``failed_at`` Unix time.  ``key`` names it for ``requeue_dead``/``purge_dead``.
    """

    key: str
    job_id: Any
    data: Any
    attempts: int
    error: str
    failed_at: float
    traceback: str | None = None


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as a queue's ``_dead_letters`` returns it: id and data still encoded."""

    key: str
    job_id: bytes
    payload: bytes
    attempts: int
    error: str
    failed_at: float
    traceback: str | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as a queue that tracks workers records it (see ``ClaimQueue.heartbeat``).

    ``id`` names the worker (unique per process and start); ``host``, ``pid`` and
    ``processor`` say where it runs and what; ``started_at`` and ``last_seen`` are Unix
    times; ``done`` and ``failed`` its job counts as of its last heartbeat.
    """

    id: str
    host: str
    pid: int
    processor: str
    started_at: float
    last_seen: float
    done: int = 0
    failed: int = 0
