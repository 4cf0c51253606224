"""The interfaces users implement, as in the original design: a queue and a batch processor.

A class needs only the methods named here; inheriting from these ABCs is optional (any
object with the methods works) but documents intent and lets type checkers help.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._job import Job

__all__ = ["BatchProcessorInterface", "QueueInterface"]


class QueueInterface(ABC):
    """A queue the batcher puts jobs into and takes them from.

    ``add(job)`` stores a job (sync, or ``async def``); ``process(callback)`` registers the
    function the queue calls with each job it delivers.  The callback may be called from
    any thread.  ``process`` must return promptly: a queue that consumes in a loop should
    return a coroutine (run as a task, cancelled at shutdown) or run its own thread.
    """

    @abstractmethod
    def add(self, job: Job[Any]) -> Any:
        """Store ``job`` for delivery."""

    @abstractmethod
    def process(self, callback: Callable[[Job[Any]], Any]) -> Any:
        """Deliver every job, now and later, to ``callback``."""


class BatchProcessorInterface(ABC):
    """Processes a batch: returns one result per job, in order (sync or ``async def``).

    An ``Exception`` instance in a slot fails that job alone; raising fails the batch.
    """

    @abstractmethod
    def process_batch(self, jobs: list[Job[Any]]) -> Sequence[Any] | Awaitable[Sequence[Any]]:
        """Process ``jobs`` and return their results in the same order."""
