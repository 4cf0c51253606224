"""The exception hierarchy: every error the library raises derives from :class:`MicroBatchingError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._job import Job

__all__ = [
    "BatchResultError",
    "BatchTimeoutError",
    "DeadlineExceededError",
    "JobCancelledError",
    "JobFailedError",
    "MicroBatchingError",
    "InvalidQueueError",
    "OverloadedError",
    "PayloadTooLargeError",
    "QueueError",
    "QueueFullError",
    "SerializationError",
    "ShutdownError",
]


class MicroBatchingError(Exception):
    """Base class of every error raised by microbatching."""


class QueueFullError(MicroBatchingError):
    """A submit found ``max_pending`` jobs already accepted and would not (or could no longer) wait."""


class ShutdownError(MicroBatchingError):
    """The batcher is shutting down or shut down, so it accepts no new job."""


class SerializationError(MicroBatchingError, TypeError):
    """A job's id or data cannot be encoded by the queue's serializer (nothing was stored)."""


class PayloadTooLargeError(MicroBatchingError, ValueError):
    """A job's encoded data exceeds the queue's ``max_payload_bytes`` (nothing was stored)."""


class QueueError(MicroBatchingError):
    """A durable queue failed an operation (the client library's own error is chained)."""


class InvalidQueueError(QueueError):
    """The URL or path does not name a usable queue: missing, not a queue, or not this kind."""


class BatchResultError(MicroBatchingError):
    """The processor broke its contract: its return value was not one result per job."""


class BatchTimeoutError(MicroBatchingError, TimeoutError):
    """The processor ran longer than ``batch_timeout``."""


class JobCancelledError(MicroBatchingError):
    """The job was abandoned before reaching an outcome (shutdown with ``cancel=True`` or a timeout)."""


class DeadlineExceededError(MicroBatchingError, TimeoutError):
    """The job's deadline passed (or would have, by the time it ran) before it started: it never ran."""


class OverloadedError(MicroBatchingError):
    """``shed=True``: the batcher predicted this job would miss ``latency_target``, so it refused it."""


class JobFailedError(MicroBatchingError):
    """The job failed for good; ``cause`` is its last error and ``attempts`` how many attempts it had."""

    def __init__(self, job: Job[object], cause: BaseException, attempts: int) -> None:
        self.job = job
        self.cause = cause
        self.attempts = attempts
        noun = "attempt" if attempts == 1 else "attempts"
        super().__init__(f"job {job.id!r} failed after {attempts} {noun}: {type(cause).__name__}: {cause}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.job, self.cause, self.attempts))
