"""What both batchers share: options, the engine, events, statistics and the admission step."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any

from ._engine import Engine, Pending
from ._events import EventEmitter
from ._job import Job
from ._options import (
    DEFAULT_BATCH_INTERVAL,
    DEFAULT_BATCH_SIZE,
    DEFAULT_RETRY,
    Options,
    check_option_names,
    check_processor_slot,
)
from ._retry import RetryPolicy
from ._stats import Stats
from ._validate import seconds
from .adapters import make_adapter
from .adapters.base import Adapter
from .adapters.claim import ClaimAdapter
from .errors import QueueFullError, ShutdownError

__all__ = ["BatcherBase", "State"]


class State(enum.Enum):
    """A batcher's one-way lifecycle."""

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class BatcherBase(EventEmitter):
    """Options and plumbing common to :class:`MicroBatching` and :class:`AsyncMicroBatching`.

    Admission runs in one order in both: the job itself (a ``Job``, not already in the
    batcher), the lifecycle (started, not shut down), encoding (a durable queue refuses
    data it cannot store), then room under ``max_pending`` -- so the same bad submit gets
    the same error from either batcher.
    """

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
        takes: str = "jobs",
        policy: str | None = None,
        latency_target: float | None = None,
        objective: str = "latency",
        shed: bool = False,
        **unknown: Any,
    ) -> None:
        super().__init__()
        check_option_names(type(self).__name__, unknown)
        check_processor_slot(type(self).__name__, queue, processor)
        self.options = Options(
            batch_size=batch_size,
            batch_interval=batch_interval,
            max_batch_weight=max_batch_weight,
            weight=weight,
            retry=retry,
            max_concurrent_batches=max_concurrent_batches,
            max_pending=max_pending,
            batch_timeout=batch_timeout,
            takes=takes,
            policy=policy,
            latency_target=latency_target,
            objective=objective,
            shed=shed,
        )
        self.queue = queue
        adapter = self._adapter = make_adapter(queue)
        self._pending = self._make_pending(max_pending)
        self._engine = Engine(self.options, processor, self, adapter, self._pending)
        self._buffer = self._engine.buffer  # where every submit goes: the hot path's one call
        self._recorder = self._engine.recorder  # exporters read the per-batch records here
        self._state = State.NEW
        # Only queues that encode (or otherwise check) jobs need a look at them at submit.
        self._prepare_hook: Callable[[Job[Any]], None] | None = (
            adapter.prepare if type(adapter).prepare is not Adapter.prepare else None
        )
        self._update_guard()

    def _make_pending(self, limit: int | None) -> Pending:
        return Pending(limit)

    @property
    def _prepare(self) -> Callable[[Job[Any]], None] | None:
        """What checks or encodes a job in the submitter's thread (instrumentation may wrap it)."""
        return self._prepare_hook

    @_prepare.setter
    def _prepare(self, hook: Callable[[Job[Any]], None] | None) -> None:
        self._prepare_hook = hook
        self._update_guard()

    def _update_guard(self) -> None:
        # A running batcher with no bound and nothing to encode skips every admission check.
        self._guarded = (
            self._state is not State.RUNNING
            or self.options.max_pending is not None
            or self._prepare_hook is not None
            or self._buffer.route is not None  # weighed, or a queue's: checked before it is routed
            or self.options.shed  # each submit asks whether it would meet the latency target
        )

    def _listeners_changed(self) -> None:
        handlers = self.listening("job_added")
        if not handlers:
            self._buffer.announce = None
            return

        def announce(job: Job[Any]) -> None:
            self.dispatch("job_added", handlers, (job,))

        self._buffer.announce = announce

    @property
    def state(self) -> State:
        """Where the batcher is in its lifecycle."""
        return self._state

    # -- changing the limits while running ---------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Jobs per batch at most; assign to change it from now on (a larger open batch leaves at once)."""
        return self.options.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.options = dataclasses.replace(self.options, batch_size=value)  # checked as at construction
        self._on_loop(lambda: self._engine.resize(batch_size=value))

    @property
    def batch_interval(self) -> float:
        """Seconds a partial batch waits; assign to change it for batches opened from now on."""
        return self.options.batch_interval

    @batch_interval.setter
    def batch_interval(self, value: float) -> None:
        self.options = dataclasses.replace(self.options, batch_interval=value)
        self._on_loop(lambda: self._engine.resize(batch_interval=value))

    def flush(self) -> None:
        """Dispatch the partial batch now, without shutting down (later jobs batch as usual)."""
        self._on_loop(self._engine.flush)

    def _on_loop(self, call: Callable[[], None]) -> None:
        """Run ``call`` where the engine runs (each batcher knows its loop)."""
        call()

    # -- admission ----------------------------------------------------------------------------

    @staticmethod
    def _resubmitted(job: Job[Any], handle: Any) -> Job[Any]:
        """The job to submit for a Job object submitted before.

        Once its earlier submission is over, the object itself.  If that submission was
        cancelled, it may still wait in the batcher (it leaves when its batch starts, counted
        as cancelled), so a copy with the same id and data goes in: the two never mix.
        """
        if handle.cancelled():
            return Job(job.id, job.data)
        if handle.done():
            if job.deadline is not None:  # the earlier submission's: this one sets its own, if any
                del job._deadline
            return job
        raise ValueError(f"{job!r} is already submitted and not finished")

    def _expect_deadline(self, deadline: float, now: float) -> float:
        """Check a submit's ``deadline=`` (seconds from ``now``), get the engine ready for it, and
        return the time it falls due."""
        seconds("deadline", deadline, allow_zero=False)
        if isinstance(self._adapter, ClaimAdapter):
            raise TypeError(
                f"deadline= cannot be used with {type(self.queue).__name__}: a deadline is a time on this "
                "process's monotonic clock, which a stored job cannot carry to another worker or a restart "
                "(submit without deadline=, or use the in-memory queue)"
            )
        self._engine.expect_deadlines()
        return now + deadline

    @staticmethod
    def _not_a_job(job: object) -> TypeError:
        return TypeError(f"submit a Job, e.g. Job(data=...); got {type(job).__name__}")

    def _encode(self, job: Job[Any]) -> None:
        if self._prepare_hook is not None:
            self._prepare_hook(job)

    def _refuse_if_closed(self) -> None:
        if self._state in (State.CLOSING, State.CLOSED):
            raise ShutdownError(
                f"{type(self).__name__} is {self._state.value}: it accepts no new jobs "
                "and cannot be restarted (make a new one)"
            )

    def _unstored_full(self, waited: float | None = None) -> QueueFullError:
        """The error of a submit that found the queue's ``max_unstored`` jobs still waiting to be stored."""
        limit = getattr(self.queue, "max_unstored", 0)
        text = f"max_unstored={limit} reached: {limit} accepted jobs are not yet stored in {self.queue!r}"
        return QueueFullError(text if waited is None else f"{text}; no room within {waited}s")

    def _queue_full(self, waited: float | None = None) -> QueueFullError:
        """The error of a submit that found (or, after ``waited`` seconds, still found) no room."""
        limit = self.options.max_pending
        text = f"max_pending={limit} reached: {limit} jobs are accepted and not yet final"
        return QueueFullError(text if waited is None else f"{text}; no room within {waited}s")

    def _raise_processor_errors(self) -> None:
        """Fail jobs with the processor's own error, not JobFailedError (what ``@batch`` wants)."""
        self._engine.outcomes.wrap_errors = False

    def _engine_stats(self) -> Stats:
        return self._engine.stats()

    def __repr__(self) -> str:
        o = self.options
        return (
            f"<{type(self).__name__} {self._state.value} batch_size={o.batch_size} "
            f"batch_interval={o.batch_interval} pending={self._pending.count}>"
        )
