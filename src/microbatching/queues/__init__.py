"""Bundled queues, and durable queues by URL.

The in-memory queue is the default; ``SQLiteQueue`` is embedded and durable; broker
queues come as extras.  ``open_queue(url)`` gives the durable queue a URL names.
"""

import importlib
from typing import Any

from ._base import ClaimQueue, QueueInterface
from ._registry import open_queue, redact, register_scheme
from ._types import DeadLetter, Lease, Message, QueueCapabilities, QueueStats, WorkerInfo
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
    "WorkerInfo",
]

#: Broker queues, imported on first use (their client libraries are optional extras):
#: class name -> (module, extra).
_BROKER_QUEUES: dict[str, tuple[str, str]] = {
    "RedisQueue": ("microbatching.queues.redis", "redis"),
    "NatsQueue": ("microbatching.queues.nats", "nats"),
    "PostgresQueue": ("microbatching.queues.postgres", "postgres"),
    "RabbitMQQueue": ("microbatching.queues.rabbitmq", "amqp"),
}


def __getattr__(name: str) -> Any:
    entry = _BROKER_QUEUES.get(name)
    if entry is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, extra = entry
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{name} needs its client library: pip install 'microbatching[{extra}]' ({exc})"
        ) from exc
    return getattr(imported, name)
