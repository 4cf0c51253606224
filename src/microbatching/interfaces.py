"""The interfaces users implement, as in the original design: a queue and a batch processor.

A class needs only the methods named here; inheriting from these ABCs is optional (any
object with the methods works) but documents intent and lets type checkers help.
``ClaimQueue`` is the bulk interface of durable queues (see :mod:`microbatching.queues`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import Any

from ._job import Job
from .queues._base import ClaimQueue, QueueInterface

__all__ = ["BatchProcessorInterface", "ClaimQueue", "QueueInterface"]


class BatchProcessorInterface(ABC):
    """Processes a batch: returns one result per job, in order (sync or ``async def``).

    An ``Exception`` instance in a slot fails that job alone; raising fails the batch.
    """

    @abstractmethod
    def process_batch(self, jobs: list[Job[Any]]) -> Sequence[Any] | Awaitable[Sequence[Any]]:
        """Process ``jobs`` and return their results in the same order."""
