"""The engine-side drivers of the queues: in-memory, push (``add``/``process``) and claim queues."""

from __future__ import annotations

from ..queues._base import ClaimQueue
from ..queues.memory import MemoryQueue
from .base import Adapter, EngineSide
from .claim import ClaimAdapter
from .push import QueueAdapter

__all__ = ["Adapter", "ClaimAdapter", "EngineSide", "QueueAdapter", "make_adapter"]


def make_adapter(queue: object) -> Adapter:
    """The adapter for ``queue``: ``None`` and :class:`MemoryQueue` use the direct path."""
    if queue is None or type(queue) is MemoryQueue:
        return Adapter()
    if isinstance(queue, ClaimQueue):
        return ClaimAdapter(queue)
    missing = [name for name in ("add", "process") if not callable(getattr(queue, name, None))]
    if missing:
        raise TypeError(
            f"queue must implement add(job) and process(callback) (QueueInterface), or be a ClaimQueue; "
            f"{type(queue).__name__} lacks {' and '.join(missing)}"
        )
    return QueueAdapter(queue)
