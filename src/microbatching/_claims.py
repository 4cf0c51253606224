"""The value types of the claim-queue interface: messages, leases, capabilities, stats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DeadLetter", "Lease", "Message", "QueueCapabilities", "QueueStats"]


@dataclass(frozen=True)
class Message:
    """A job as it is handed to a queue's ``enqueue``: already encoded.

    ``key`` identifies this enqueued message uniquely (a second enqueue of the same key is
    ignored); ``job_id`` and ``payload`` are the job's id and data, encoded.
    """

    key: str
    job_id: bytes
    payload: bytes


@dataclass(frozen=True)
class Lease:
    """What a claim puts into ``job.receipt``: which message, and proof of the current lease.

    ``token`` changes on every claim, so an acknowledgement from a consumer whose lease
    expired (and whose job was claimed again) is refused.  ``attempts`` counts the claims
    of the message, this one included; ``recovered`` how many earlier leases expired
    without an outcome (a consumer died or stalled).  ``ref`` is the queue's own handle
    on the message (a row id, a stream entry id, a delivery tag).
    """

    key: str
    token: str
    attempts: int
    recovered: int = 0
    ref: Any = None


@dataclass(frozen=True)
class QueueCapabilities:
    """What a queue promises; the conformance suite skips the cases a queue does not claim.

    - ``durable``: jobs survive the queue being closed and reopened (and a crash).
    - ``lease_expiry``: a claimed job comes back by itself when its lease runs out while
      its consumer is silent (brokers that only notice a closed connection say ``False``).
    - ``lease_tokens``: an acknowledgement under an expired lease cannot remove a job that
      was claimed again.
    - ``delayed_retry``: ``retry(jobs, delays)`` keeps the job back for its delay.
    - ``dead_letters``: failed jobs are kept, listable, requeueable and purgeable.
    - ``shared``: several processes may consume one queue at once.
    """

    durable: bool = True
    lease_expiry: bool = True
    lease_tokens: bool = True
    delayed_retry: bool = True
    dead_letters: bool = True
    shared: bool = True


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of a claim queue: jobs ``pending`` (ready now), ``delayed`` (waiting out a
    retry delay), ``in_flight`` (leased), ``done`` (acknowledged, ever), ``dead`` (in the
    dead-letter store), and ``oldest_age`` (seconds since the oldest unfinished job was
    enqueued, ``None`` when there is none)."""

    pending: int
    delayed: int
    in_flight: int
    done: int
    dead: int
    oldest_age: float | None


@dataclass(frozen=True)
class DeadLetter:
    """A job that failed for good: its data, attempts and last error (``failed_at`` is Unix time)."""

    key: str
    job_id: Any
    data: Any
    attempts: int
    error: str
    failed_at: float
