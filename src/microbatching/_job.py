"""Jobs and the handles that deliver their results."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import secrets
from typing import Any, Generic, TypeVar

__all__ = ["Job", "JobResult"]

T = TypeVar("T")

# Generated ids are unique across processes (random prefix, pid) and cheap: the id is only
# built the first time someone reads it, so the hot path never pays for it.
_ID_PREFIX = f"{secrets.token_hex(4)}-{os.getpid()}-"
_id_counter = itertools.count(1)


class Job(Generic[T]):
    """One unit of work: an ``id``, its ``data`` and the bookkeeping the batcher keeps on it.

    ``Job(1, "payload")`` or ``Job(data="payload")``; without an id a unique string id is
    generated.  ``attempts`` counts the attempts started (1 while the first runs);
    ``submitted_at`` is the monotonic time of submission (``None`` before).  ``receipt``
    is opaque to users: a queue may keep its delivery data there (a lease token, say).
    """

    # Only four slots are filled here: every filled slot costs the garbage collector a
    # visit each time it scans the job, and bulk submits keep many jobs alive at once.
    # ``_submitted_at``, ``_ready_at`` and ``_receipt`` are filled when used.
    __slots__ = ("_handle", "_id", "_ready_at", "_receipt", "_submitted_at", "attempts", "data")

    _ready_at: float
    _submitted_at: float

    def __init__(self, id: Any = None, data: T = None) -> None:  # type: ignore[assignment]
        self._id = id
        self.data = data
        self.attempts = 0
        self._handle: Any = None

    @property
    def submitted_at(self) -> float | None:
        """Monotonic time of submission, or ``None`` before the job is submitted."""
        try:
            return self._submitted_at
        except AttributeError:
            return None

    @submitted_at.setter
    def submitted_at(self, value: float) -> None:
        self._submitted_at = value

    @property
    def receipt(self) -> Any:
        """Delivery data a queue keeps on the job (a lease token, say), or ``None``."""
        try:
            return self._receipt
        except AttributeError:
            return None

    @receipt.setter
    def receipt(self, value: Any) -> None:
        self._receipt = value

    @property
    def id(self) -> Any:
        """The job's id, generated on first read when none was given."""
        if self._id is None:
            self._id = f"{_ID_PREFIX}{next(_id_counter)}"
        return self._id

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, attempts={self.attempts})"


class JobResult(concurrent.futures.Future[Any]):
    """The handle of a job submitted to :class:`~microbatching.MicroBatching`.

    A :class:`concurrent.futures.Future`: ``result(timeout)`` returns the job's value or
    raises its error, ``exception(timeout)``, ``done()``, ``add_done_callback()``; ``job``
    is the job it belongs to.  Cancelling it before its batch starts drops the job.
    """

    def __init__(self, job: Job[Any]) -> None:
        super().__init__()
        self.job = job

    def __repr__(self) -> str:
        return f"<JobResult job={self.job.id!r} {self._state.lower()}>"
