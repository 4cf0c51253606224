"""What both batchers share: options, the engine, events and statistics."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from ._engine import Engine
from ._events import EventEmitter
from ._job import Job
from ._options import DEFAULT_BATCH_INTERVAL, DEFAULT_BATCH_SIZE, DEFAULT_RETRY, Options
from ._retry import RetryPolicy
from ._stats import Stats
from .adapters import make_adapter
from .adapters.base import Adapter
from .errors import QueueFullError, ShutdownError

__all__ = ["BatcherBase", "State"]


class State(enum.Enum):
    """A batcher's one-way lifecycle."""

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class BatcherBase(EventEmitter):
    """Options and plumbing common to :class:`MicroBatching` and :class:`AsyncMicroBatching`."""

    def __init__(
        self,
        queue: object = None,
        processor: object = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_interval: float = DEFAULT_BATCH_INTERVAL,
        max_batch_weight: float | None = None,
        weight: Callable[[Any], float] | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        max_concurrent_batches: int = 1,
        max_pending: int | None = None,
        batch_timeout: float | None = None,
    ) -> None:
        super().__init__()
        if processor is None:
            raise TypeError("a processor is required: MicroBatching(queue, processor, ...)")
        self.options = Options(
            batch_size=batch_size,
            batch_interval=batch_interval,
            max_batch_weight=max_batch_weight,
            weight=weight,
            retry=retry,
            max_concurrent_batches=max_concurrent_batches,
            max_pending=max_pending,
            batch_timeout=batch_timeout,
        )
        self.queue = queue
        adapter = make_adapter(queue)
        self._engine = Engine(self.options, processor, self, adapter)
        # Only queues that encode jobs need a look at them in the submitter's thread.
        self._state = State.NEW
        self._prepare_hook: Callable[[Job[Any]], None] | None = (
            adapter.prepare if type(adapter).prepare is not Adapter.prepare else None
        )
        self._limit: float = float("inf") if max_pending is None else max_pending
        self._update_guard()

    @property
    def _prepare(self) -> Callable[[Job[Any]], None] | None:
        """What checks or encodes a job in the submitter's thread (instrumentation may wrap it)."""
        return self._prepare_hook

    @_prepare.setter
    def _prepare(self, hook: Callable[[Job[Any]], None] | None) -> None:
        self._prepare_hook = hook
        self._update_guard()

    def _update_guard(self) -> None:
        # A running batcher with no bound and nothing to encode skips every submit check.
        self._guarded = (
            self._state is not State.RUNNING
            or self.options.max_pending is not None
            or self._prepare_hook is not None
        )

    def _listeners_changed(self) -> None:
        self._engine.announce_added = self._handlers.get("job_added", ())

    @property
    def state(self) -> State:
        """Where the batcher is in its lifecycle."""
        return self._state

    def _refuse_if_closed(self) -> None:
        if self._state in (State.CLOSING, State.CLOSED):
            raise ShutdownError(
                f"{type(self).__name__} is {self._state.value}: it accepts no new jobs "
                "and cannot be restarted (make a new one)"
            )

    def _queue_full(self, waited: float | None = None) -> QueueFullError:
        """The error of a submit that found (or, after ``waited`` seconds, still found) no room."""
        limit = self.options.max_pending
        text = f"max_pending={limit} reached: {limit} jobs are accepted and not yet final"
        return QueueFullError(text if waited is None else f"{text}; no room within {waited}s")

    def _engine_stats(self) -> Stats:
        return self._engine.stats()

    def __repr__(self) -> str:
        o = self.options
        return (
            f"<{type(self).__name__} {self._state.value} batch_size={o.batch_size} "
            f"batch_interval={o.batch_interval} pending={self._engine.pending}>"
        )
