"""Bundled queues.  The in-memory queue is the default; durable ones come as extras."""

from .memory import MemoryQueue
from .sqlite import SQLiteQueue

__all__ = ["MemoryQueue", "SQLiteQueue"]
