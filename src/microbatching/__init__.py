"""microbatching: group single jobs into batches by size, time and weight.

Hand each batch to your processor and give every job its own result, with retries,
backpressure, lifecycle events and a graceful shutdown that loses nothing.
"""

from ._async import AsyncMicroBatching
from ._base import State
from ._batch import Batch
from ._decorator import batch
from ._events import EVENTS, EventEmitter
from ._job import Job, JobResult
from ._options import DEFAULT_BATCH_INTERVAL, DEFAULT_BATCH_SIZE, DEFAULT_RETRY
from ._retry import RetryPolicy
from ._stats import PolicyStats, Stats, Summary
from ._sync import MicroBatching
from .errors import (
    BatchResultError,
    BatchTimeoutError,
    DeadlineExceededError,
    JobCancelledError,
    JobFailedError,
    MicroBatchingError,
    OverloadedError,
    PayloadTooLargeError,
    QueueFullError,
    SerializationError,
    ShutdownError,
)
from .interfaces import BatchProcessorInterface, QueueInterface
from .queues import MemoryQueue

__version__ = "0.1.0"

__all__ = [
    # batchers
    "AsyncMicroBatching",
    "MicroBatching",
    "batch",
    # jobs and results
    "Batch",
    "Job",
    "JobResult",
    # configuration
    "DEFAULT_BATCH_INTERVAL",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_RETRY",
    "RetryPolicy",
    # interfaces and queues
    "BatchProcessorInterface",
    "MemoryQueue",
    "QueueInterface",
    # events and introspection
    "EVENTS",
    "EventEmitter",
    "State",
    "Stats",
    "Summary",
    "PolicyStats",
    # errors
    "BatchResultError",
    "BatchTimeoutError",
    "DeadlineExceededError",
    "JobCancelledError",
    "JobFailedError",
    "MicroBatchingError",
    "OverloadedError",
    "PayloadTooLargeError",
    "QueueFullError",
    "SerializationError",
    "ShutdownError",
]
