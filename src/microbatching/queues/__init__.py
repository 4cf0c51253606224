"""Bundled queues.  The in-memory queue is the default; durable ones come as extras."""

from .memory import MemoryQueue

__all__ = ["MemoryQueue"]
