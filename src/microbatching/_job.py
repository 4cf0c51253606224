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

    __slots__ = ("_handle", "_id", "_ready_at", "attempts", "data", "receipt", "submitted_at")

    def __init__(self, id: Any = None, data: T = None) -> None:  # type: ignore[assignment]
        self._id = id
        self.data = data
        self.attempts = 0
        self.submitted_at: float | None = None
        self.receipt: Any = None
        self._handle: Any = None
        self._ready_at = 0.0

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
