"""Driving a user queue that implements only ``add(job)`` and ``process(callback)``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any

from .._job import Job
from .base import Adapter

__all__ = ["QueueAdapter"]

logger = logging.getLogger("microbatching")


class QueueAdapter(Adapter):
    """Drives a user queue through its ``add(job)`` and ``process(callback)`` alone.

    Jobs handed to the queue are remembered until it delivers them, so a queue that hands
    back copies (after serializing, say) still reaches the submitter's handle, and jobs it
    never delivers can be failed at shutdown instead of hanging their submitters.  Copies
    are matched by id, oldest first when several jobs share one.
    """

    direct = False
    settles = True

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self._outside: dict[Any, list[Job[Any]]] = {}
        self._consumer: asyncio.Future[Any] | None = None
        self._adding: set[asyncio.Future[Any]] = set()  # keeps async add() tasks alive
        self._broken: BaseException | None = None

    def prepare(self, job: Job[Any]) -> None:
        job.id  # noqa: B018  (generate an omitted id now, in the submitter's thread, not racing the loop)

    def start(self) -> None:
        loop_thread = threading.get_ident()
        engine = self.engine

        def callback(job: Job[Any]) -> None:
            if threading.get_ident() == loop_thread:
                engine.deliver(job)
            else:
                engine.deliver_threadsafe(job)

        outcome = self.queue.process(callback)
        if inspect.isawaitable(outcome):
            self._consumer = asyncio.ensure_future(outcome)
            self._consumer.add_done_callback(self._consumer_done)

    def _consumer_done(self, consumer: asyncio.Future[Any]) -> None:
        error = None if consumer.cancelled() else consumer.exception()
        if error is None:
            return  # process() registered the callback and returned: fine
        logger.error("the queue's process() task died; failing the jobs it held", exc_info=error)
        self._broken = error
        for job in self.abandon():
            self.engine.fail_for_good(job, error)

    def admit(self, job: Job[Any]) -> None:
        if self._broken is not None:  # nothing would ever deliver it
            self.engine.fail_for_good(job, self._broken)
            return
        self._outside.setdefault(job.id, []).append(job)
        try:
            outcome = self.queue.add(job)
        except Exception as exc:
            self._add_failed(job, exc)
            return
        if inspect.isawaitable(outcome):
            task = asyncio.ensure_future(outcome)
            self._adding.add(task)
            task.add_done_callback(lambda done: self._add_done(job, done))

    requeue = admit

    def _add_done(self, job: Job[Any], task: asyncio.Future[Any]) -> None:
        self._adding.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._add_failed(job, error)

    def _add_failed(self, job: Job[Any], exc: BaseException) -> None:
        if self._take(job.id, job) is not None:
            self.engine.fail_for_good(job, exc)

    def _take(self, id: Any, job: Job[Any]) -> Job[Any] | None:
        """Forget and return our job ``job`` stands for: itself if we hold it, else the oldest with its id."""
        waiting = self._outside.get(id)
        if not waiting:
            return None
        own = next((candidate for candidate in waiting if candidate is job), waiting[0])
        waiting.remove(own)
        if not waiting:
            del self._outside[id]
        return own

    def delivered(self, job: Job[Any]) -> tuple[Job[Any], bool]:
        own = self._take(job.id, job)
        if own is None:
            return job, False  # submitted elsewhere
        if own is not job:  # a copy of our job: process the copy, keep our bookkeeping on it
            job._handle, job.attempts, job._submitted_at = own._handle, own.attempts, own._submitted_at
        return job, True

    def abandon(self) -> list[Job[Any]]:
        jobs = [job for waiting in self._outside.values() for job in waiting]
        self._outside.clear()
        return jobs

    async def close(self) -> None:
        if self._consumer is not None and not self._consumer.done():
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        closer = getattr(self.queue, "close", None)
        if callable(closer):
            outcome = closer()
            if inspect.isawaitable(outcome):
                await outcome
