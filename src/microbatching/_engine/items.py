"""Items submitted without a ``Job``: the futures of single items, and ``submit_many``'s results.

A batch of items keeps them in ``batch.jobs`` and their futures in ``batch.futures`` (or,
for a ``submit_many`` call, a :class:`Many` that collects the results in order).  A Job
is made for an item only where one is needed: a processor that takes jobs, a listener
that receives them, a retry, a durable queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

from .._batch import Batch
from .._job import Job
from ..errors import ShutdownError

__all__ = ["Many", "job_for", "job_for_slot", "many_future_done", "to_jobs"]


class Many:
    """The results of one ``submit_many`` call, filled batch by batch, in order.

    A failed item's exception stands in its slot (as ``asyncio.gather(...,
    return_exceptions=True)`` gives it); ``done`` is called with the list once every slot
    is final.
    """

    __slots__ = ("_done", "remaining", "results")

    def __init__(self, count: int, done: Callable[[list[Any]], None]) -> None:
        self.results: list[Any] = [None] * count
        self.remaining = count
        self._done = done

    def fill(self, offset: int, results: Sequence[Any]) -> None:
        """Results of a batch of this call's items that starts at ``offset``."""
        self.results[offset : offset + len(results)] = results
        self._settled(len(results))

    def set(self, slot: int, result: Any) -> None:
        """One item's final result (or exception), after a retry or a cancel."""
        self.results[slot] = result
        self._settled(1)

    def _settled(self, count: int) -> None:
        self.remaining -= count
        if self.remaining == 0:
            self._done(self.results)

    def refuse(self, items: list[Any]) -> None:
        """The call reached the batcher after it shut down: every slot says so."""
        error = ShutdownError("the batcher shut down before these items were accepted")
        self._done([error] * len(items))


def job_for(item: Any, handle: Any, ready_at: float) -> Job[Any]:
    """The Job standing for a submitted item (its future is the job's handle)."""
    job: Job[Any] = Job(None, item)
    job._handle = handle
    job._submitted_at = job._ready_at = ready_at
    return job


class _SlotHandle:
    """The handle of one item of a ``submit_many`` call once it needs a Job (a retry)."""

    __slots__ = ("_many", "_slot", "_state")

    def __init__(self, many: Many, slot: int) -> None:
        # the names asyncio's futures give their states: the engine reads ``_state`` of any handle
        self._many, self._slot, self._state = many, slot, "PENDING"

    def done(self) -> bool:
        return self._state != "PENDING"

    def cancelled(self) -> bool:
        return False

    def set_result(self, result: Any) -> None:
        self._finish(result)

    def set_exception(self, error: BaseException) -> None:
        self._finish(error)

    def _finish(self, outcome: Any) -> None:
        if self._state != "PENDING":
            raise asyncio.InvalidStateError("already settled")
        self._state = "FINISHED"
        self._many.set(self._slot, outcome)


def job_for_slot(batch: Batch, slot: int) -> Job[Any]:
    """A Job for one item of a batch of items (its handle: the item's future or its Many slot)."""
    if batch.futures is not None:
        handle: Any = batch.futures[slot]
    else:
        handle = _SlotHandle(batch.bulk, batch.offset + slot)
    return job_for(batch.jobs[slot], handle, batch.opened_at)


def to_jobs(batch: Batch, now: float) -> None:
    """Turn a batch of items into a batch of Jobs (their futures become their handles)."""
    opened = batch.opened_at or now
    if batch.futures is not None:
        pairs = zip(batch.jobs, batch.futures, strict=True)
        batch.jobs = [job_for(item, future, opened) for item, future in pairs]
        batch.futures = None
    elif batch.bulk is not None:
        many, offset = batch.bulk, batch.offset
        batch.jobs = [
            job_for(item, _SlotHandle(many, offset + i), opened) for i, item in enumerate(batch.jobs)
        ]
        batch.bulk = None


def many_future_done(
    future: asyncio.Future[Any] | concurrent.futures.Future[Any],
) -> Callable[[list[Any]], None]:
    """What a Many calls when complete: resolve ``future`` with the results (if still waited for)."""

    def done(results: list[Any]) -> None:
        if not future.done():
            future.set_result(results)

    return done
