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
from typing import TYPE_CHECKING, Any

from .._job import Job
from .items import Many, job_for

if TYPE_CHECKING:
    from .buffer import Buffer

__all__ = ["Inbox"]

logger = logging.getLogger("microbatching")


class Inbox:
    """Jobs handed over by other threads, drained on the loop thread."""

    __slots__ = (
        "_admit",
        "_buffer",
        "_deliver",
        "_deliveries",
        "_items",
        "_loop",
        "_many",
        "_refuse",
        "_scheduled",
        "_submitted",
        "closed",
    )

    def __init__(
        self,
        buffer: Buffer,
        deliver: Callable[[Job[Any]], None],
        refuse: Callable[[Job[Any]], None],
    ) -> None:
        self._buffer = buffer
        self._admit = buffer.admit
        self._deliver = deliver
        self._refuse = refuse  # a submitted job that arrived too late: settle it as refused
        self._submitted: deque[Job[Any]] = deque()
        self._items: deque[tuple[Any, Any]] = deque()  # (item, handle) of submit(item)
        self._many: deque[tuple[list[Any], Many]] = deque()  # submit_many(items)
        self._deliveries: deque[Job[Any]] = deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set once the loop will run no more callbacks of this engine.
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def backlog(self) -> int:
        """Jobs and items handed over and not yet taken by the loop."""
        return len(self._submitted) + len(self._items) + sum(len(values) for values, _ in list(self._many))

    def submit(self, job: Job[Any]) -> None:
        """A job submitted on another thread (any thread)."""
        self._submitted.append(job)
        if self.closed or not self._scheduled:  # else a drain is on its way
            self._wake()

    def submit_item(self, item: Any, handle: Any) -> None:
        """An item submitted on another thread, with its handle (any thread)."""
        self._items.append((item, handle))
        if self.closed or not self._scheduled:  # else a drain is on its way
            self._wake()

    def submit_many(self, items: list[Any], many: Many) -> None:
        """The items of one ``submit_many`` call on another thread (any thread)."""
        self._many.append((items, many))
        self._wake()

    def deliver(self, job: Job[Any]) -> None:
        """A job a queue delivered on another thread (any thread)."""
        self._deliveries.append(job)
        if self.closed or not self._scheduled:  # else a drain is on its way
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
        items = self._items
        if refuse_submitted:
            for _ in range(len(items)):
                self._refuse(job_for(*items.popleft(), ready_at=0.0))
        else:
            admit_item = self._buffer.admit_item
            for _ in range(len(items)):
                admit_item(*items.popleft())
        many = self._many
        for _ in range(len(many)):
            values, collector = many.popleft()
            if refuse_submitted:
                collector.refuse(values)
            else:
                self._buffer.add_many(values, collector)

    def settle_leftovers(self) -> None:
        """Refuse what arrived after the loop stopped (any thread)."""
        while self._submitted:
            try:
                job = self._submitted.popleft()
            except IndexError:  # another thread took the last one
                break
            self._refuse(job)
        while self._items:
            try:
                item, handle = self._items.popleft()
            except IndexError:
                break
            self._refuse(job_for(item, handle, 0.0))
        while self._many:
            try:
                values, collector = self._many.popleft()
            except IndexError:
                break
            collector.refuse(values)
        while self._deliveries:
            try:
                job = self._deliveries.popleft()
            except IndexError:
                break
            logger.warning("dropping %r: delivered by the queue after shutdown", job)
