"""The hand-off from other threads to the loop: submitted jobs and jobs a queue delivered.

Appending to a deque is thread-safe; one ``call_soon_threadsafe`` per burst wakes the loop,
which drains both deques in one callback.  Once the loop is gone, whatever still arrives
is settled on the arriving thread, so no submitter waits forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from .._job import Job

__all__ = ["Inbox"]

logger = logging.getLogger("microbatching")


class Inbox:
    """Jobs handed over by other threads, drained on the loop thread."""

    __slots__ = (
        "_admit",
        "_deliver",
        "_deliveries",
        "_loop",
        "_refuse",
        "_scheduled",
        "_submitted",
        "closed",
    )

    def __init__(
        self,
        admit: Callable[[Job[Any]], None],
        deliver: Callable[[Job[Any]], None],
        refuse: Callable[[Job[Any]], None],
    ) -> None:
        self._admit = admit
        self._deliver = deliver
        self._refuse = refuse  # a submitted job that arrived too late: settle it as refused
        self._submitted: deque[Job[Any]] = deque()
        self._deliveries: deque[Job[Any]] = deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set once the loop will run no more callbacks of this engine.
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def submit(self, job: Job[Any]) -> None:
        """A job submitted on another thread (any thread)."""
        self._submitted.append(job)
        self._wake()

    def deliver(self, job: Job[Any]) -> None:
        """A job a queue delivered on another thread (any thread)."""
        self._deliveries.append(job)
        self._wake()

    def _wake(self) -> None:
        if self.closed or self._loop is None:
            self.settle_leftovers()
            return
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop closed between the check and the call
                self.settle_leftovers()

    def drain(self, refuse_submitted: bool = False) -> None:
        """Hand everything over (loop thread); with ``refuse_submitted``, submitted jobs are refused."""
        self._scheduled = False  # before popping: a later append schedules again
        deliveries = self._deliveries
        for _ in range(len(deliveries)):
            self._deliver(deliveries.popleft())
        submitted = self._submitted
        take = self._refuse if refuse_submitted else self._admit
        for _ in range(len(submitted)):
            take(submitted.popleft())

    def settle_leftovers(self) -> None:
        """Refuse what arrived after the loop stopped (any thread)."""
        while self._submitted:
            try:
                job = self._submitted.popleft()
            except IndexError:  # another thread took the last one
                break
            self._refuse(job)
        while self._deliveries:
            try:
                job = self._deliveries.popleft()
            except IndexError:
                break
            logger.warning("dropping %r: delivered by the queue after shutdown", job)
