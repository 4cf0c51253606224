"""The in-memory queue: the default, for batching inside one process."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .._job import Job
from ._base import QueueInterface

__all__ = ["MemoryQueue"]


class MemoryQueue(QueueInterface):
    """Hands each added job to the ``process`` callback at once (or holds it until one is set).

    It keeps nothing across a restart.  Given to a batcher (or ``queue=None``), it is wired
    into the engine directly: adding a job is putting it into the open batch.
    """

    def __init__(self) -> None:
        self._callback: Callable[[Job[Any]], Any] | None = None
        self._held: deque[Job[Any]] = deque()

    def add(self, job: Job[Any]) -> None:
        """Deliver ``job`` to the callback, or hold it until ``process`` is called."""
        if self._callback is None:
            self._held.append(job)
        else:
            self._callback(job)

    def process(self, callback: Callable[[Job[Any]], Any]) -> None:
        """Set the callback that receives every job, first the ones held so far."""
        self._callback = callback
        while self._held:
            callback(self._held.popleft())

    def __len__(self) -> int:
        return len(self._held)
