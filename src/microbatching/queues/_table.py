"""The job-table model shared by the SQL queues (SQLite, PostgreSQL).

One queue is three tables named after it: ``<name>_jobs`` (queued and leased jobs),
``<name>_dead`` (dead letters) and ``<name>_meta`` (counters and the schema version).
A job row is ready when ``token IS NULL AND available_at <= now``; a claim sets a fresh
``token``, moves ``available_at`` to the lease deadline and counts the attempt, and a row
whose lease ran out (``token IS NOT NULL AND available_at <= now``) is ready again, its
``recovered`` count raised.  Every settle names the row and the token it was claimed
under, so a late settle finds nothing.  Each database phrases the statements its own way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._types import Claimed, Lease, QueueStats

__all__ = ["SCHEMA_VERSION", "WORKER_LOST", "JobTable", "claimed_row", "queue_stats", "worker_lost"]

#: Version 2 added the dead letters' traceback column.
SCHEMA_VERSION = 2
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")
#: The columns of ``<name>_jobs`` every SQL queue keeps, in claim order.
JOB_COLUMNS = (
    "seq",
    "key",
    "job_id",
    "payload",
    "attempts",
    "recovered",
    "token",
    "available_at",
    "enqueued_at",
)
DEAD_COLUMNS = (
    "seq",
    "key",
    "job_id",
    "payload",
    "attempts",
    "error",
    "traceback",
    "enqueued_at",
    "failed_at",
)


@dataclass(frozen=True)
class JobTable:
    """The table names of the queue called ``name`` (lower-case letters, digits, ``_``)."""

    name: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"queue name must be 1-40 lower-case letters, digits or _ (not starting with a digit), "
                f"got {self.name!r}"
            )

    @property
    def jobs(self) -> str:
        return f"{self.name}_jobs"

    @property
    def dead(self) -> str:
        return f"{self.name}_dead"

    @property
    def meta(self) -> str:
        return f"{self.name}_meta"


def claimed_row(
    row: tuple[int, str, bytes, bytes, int, int, str | None], token: str, epoch: int = 0
) -> Claimed:
    """A claimed row ``(seq, key, job_id, payload, attempts, recovered, old token)`` read before the claim."""
    seq, key, job_id, payload, attempts, recovered, old = row
    return Claimed(
        Lease(key, token, attempts + 1, recovered + (old is not None), seq, epoch), job_id, payload
    )


#: The dead-letter error of a job whose lease ran out on its last attempt (a database
#: may fill ``{attempts}`` in itself, inside the statement that moves the row).
WORKER_LOST = (
    "WorkerLost: the lease expired during attempt {attempts}: the worker died or stalled "
    "while processing this job"
)


def worker_lost(attempts: int) -> str:
    """The dead-letter error of a job whose lease ran out on its last attempt."""
    return WORKER_LOST.format(attempts=attempts)


def queue_stats(
    pending: int, delayed: int, in_flight: int, done: int, dead: int, oldest: float | None, now: float
) -> QueueStats:
    """The stats of a job table from its counts and the enqueue time of its oldest row."""
    age = None if oldest is None else max(0.0, now - oldest)
    return QueueStats(int(pending), int(delayed), int(in_flight), int(done), int(dead), age)
