"""Bundled queues, and durable queues by URL.

The in-memory queue is the default; ``SQLiteQueue`` is embedded and durable; broker
queues come as extras.  ``open_queue(url)`` gives the durable queue a URL names.
"""

from ._base import ClaimQueue, QueueInterface
from ._registry import open_queue, redact, register_scheme
from ._types import DeadLetter, Lease, Message, QueueCapabilities, QueueStats
from .memory import MemoryQueue
from .sqlite import SQLiteQueue

__all__ = [
    # queues
    "MemoryQueue",
    "SQLiteQueue",
    "open_queue",
    "register_scheme",
    "redact",
    # the durable-queue interface and its values
    "ClaimQueue",
    "DeadLetter",
    "Lease",
    "Message",
    "QueueCapabilities",
    "QueueInterface",
    "QueueStats",
]
