"""Connecting a queue to the engine: the in-memory fast path, or any ``add``/``process`` queue."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

from ._engine import Adapter
from ._job import Job
from .queues.memory import MemoryQueue

__all__ = ["QueueAdapter", "make_adapter"]


def make_adapter(queue: object) -> Adapter:
    """The adapter for ``queue``: ``None`` and :class:`MemoryQueue` use the direct path."""
    if queue is None or type(queue) is MemoryQueue:
        return Adapter()
    custom = getattr(queue, "make_adapter", None)
    if callable(custom):  # a bundled durable queue brings its own
        adapter: Adapter = custom()
        return adapter
    missing = [name for name in ("add", "process") if not callable(getattr(queue, name, None))]
    if missing:
        raise TypeError(
            f"queue must implement add(job) and process(callback) (QueueInterface); "
            f"{type(queue).__name__} lacks {' and '.join(missing)}"
        )
    return QueueAdapter(queue)


class QueueAdapter(Adapter):
    """Drives a user queue through its ``add(job)`` and ``process(callback)`` alone.

    Jobs handed to the queue are remembered by id until it delivers them, so a queue that
    hands back copies (after serializing, say) still reaches the submitter's handle, and
    jobs it never delivers can be failed at shutdown instead of hanging their submitters.
    """

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self._outside: dict[Any, Job[Any]] = {}
        self._consumer: asyncio.Future[Any] | None = None

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

    def admit(self, job: Job[Any]) -> None:
        self._outside[job.id] = job
        try:
            outcome = self.queue.add(job)
        except Exception as exc:
            self._add_failed(job, exc)
            return
        if inspect.isawaitable(outcome):
            asyncio.ensure_future(outcome).add_done_callback(lambda task: self._add_done(job, task))

    requeue = admit

    def _add_done(self, job: Job[Any], task: asyncio.Future[Any]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._add_failed(job, error)

    def _add_failed(self, job: Job[Any], exc: BaseException) -> None:
        if self._outside.pop(job.id, None) is not None:
            self.engine.fail_for_good(job, exc)

    def delivered(self, job: Job[Any]) -> Job[Any] | None:
        own = self._outside.pop(job.id, None)
        if own is None or own is job:
            return own
        # A copy of our job: process the copy, keep our bookkeeping on it.
        job._handle, job.attempts, job._submitted_at = own._handle, own.attempts, own._submitted_at
        return job

    def abandon(self) -> list[Job[Any]]:
        jobs = list(self._outside.values())
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
