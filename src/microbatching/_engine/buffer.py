"""The buffer: the open batch, the batches ready to run, and the triggers that close them.

A batch leaves when it holds ``batch_size`` jobs, when adding a job would take it past
``max_batch_weight``, when its oldest job has waited ``batch_interval`` (measured from the
moment that job became ready, on the loop's monotonic clock), or at once during shutdown.
The buffer does no I/O: it schedules its one timer on the loop and tells ``on_ready``
when a batch may run; the engine decides when one does (``next_batch``).
"""

from __future__ import annotations

import asyncio
import math
from asyncio.events import _get_running_loop  # the C accessor
from collections import deque
from collections.abc import Callable
from typing import Any

from .._batch import Batch
from .._job import Job
from .items import Many, job_for, to_jobs
from .pending import Pending

__all__ = ["Buffer", "WeightError"]


class WeightError(ValueError):
    """``weight(job)`` gave something that is not a finite number >= 0."""


class Buffer:
    """Open and ready batches, and the size, weight, time and shutdown triggers."""

    # Slots: admit() reads several of these for every job.
    __slots__ = (
        "_interval",
        "_limit",
        "_loop",
        "_max_weight",
        "_now",
        "_on_bad_weight",
        "_on_ready",
        "_open",
        "_ready",
        "_timer",
        "_weigh",
        "announce",
        "draining",
        "off_loop",
        "pending",
        "route",
        "triggers",
    )  # fmt: skip

    def __init__(
        self,
        batch_size: int,
        interval: float,
        weight: Callable[[Any], float] | None,
        max_weight: float | None,
        pending: Pending,
        on_ready: Callable[[], None],
        on_bad_weight: Callable[[Job[Any], BaseException], None],
    ) -> None:
        self._limit = batch_size
        self._interval = interval
        self._weigh = weight if max_weight is not None else None
        self._max_weight = max_weight or 0.0
        self.pending = pending
        self._on_ready = on_ready
        self._on_bad_weight = on_bad_weight
        self._open = Batch()
        self._ready: deque[Batch] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.draining = False
        self.triggers = {"size": 0, "time": 0, "weight": 0, "flush": 0, "bulk": 0, "shutdown": 0}
        #: The job_added handlers, kept up to date by the batcher (empty: nobody listens).
        self.announce: Callable[[Job[Any]], None] | None = None
        #: Where admitted jobs go when not straight into the open batch (a queue's adapter,
        #: or ``add`` when batches are weighed); ``None`` is the in-memory fast path.
        self.route: Callable[[Job[Any]], None] | None = None if self._weigh is None else self.add
        #: Raises the error of a submit made off the loop's thread (set by the asyncio batcher;
        #: checked once per batch, where a submit would touch the loop, not once per job).
        self.off_loop: Callable[[], None] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop, now: Callable[[], float]) -> None:
        self._loop = loop
        self._now = now

    # -- filling ---------------------------------------------------------------------------

    def admit(self, job: Job[Any]) -> None:
        """A newly submitted job: counted, announced, then routed or put into the open batch.

        The hot path of every submit.  Its last lines are ``add``'s for an unweighed batch,
        written out (a call costs more than they do): keep the two in step; a property test
        pins that they batch alike.  The loop's thread is checked only where a submit would
        touch the loop (first job of a batch, or a full one).
        """
        self.pending.count += 1
        if self.announce is not None:
            self.announce(job)
        if self.route is not None:
            self.route(job)
            return
        batch = self._open
        if batch.futures is not None:  # the open batch holds items: they become Jobs too
            to_jobs(batch, self._now())
        jobs = batch.jobs
        jobs.append(job)
        if len(jobs) >= self._limit:
            self._on_loop_or_undo(job)
            self._close("size")
        elif len(jobs) == 1:
            self._on_loop_or_undo(job)
            self._opened(job)

    def admit_item(self, item: Any, future: Any) -> None:
        """A newly submitted item (no Job): counted, then put into the open batch with its future.

        The hot path of ``submit_nowait(item)``: where a Job is needed (listeners, a queue
        that takes jobs, weights, an open batch of Jobs) the item goes in as one.
        """
        batch = self._open
        futures = batch.futures
        if futures is None:  # the batch's first item (or the open batch holds Jobs)
            self._first_item(batch, item, future)
            return
        self.pending.count += 1
        items = batch.jobs
        items.append(item)
        futures.append(future)
        if len(items) >= self._limit:
            self._on_loop_or_undo(future)
            self._close("size")

    def _first_item(self, batch: Batch, item: Any, future: Any) -> None:
        if batch.jobs or self.announce is not None or self.route is not None:
            self.admit(job_for(item, future, self._now()))
            return
        self.pending.count += 1
        batch.jobs.append(item)
        batch.futures = [future]
        self._on_loop_or_undo(future)
        if self._limit == 1:
            self._close("size")
        else:
            self._opened_at(self._now())

    def add_many(self, items: list[Any], many: Many) -> None:
        """The items of one ``submit_many`` call: batches of ``batch_size``, ready to run at once.

        They have nobody to wait for, so even the last, partial batch leaves now.
        """
        self.pending.count += len(items)
        limit = self._limit
        now = self._now()
        for offset in range(0, len(items), limit):
            batch = Batch()
            batch.jobs = items[offset : offset + limit]
            batch.bulk, batch.offset = many, offset
            batch.opened_at = batch.closed_at = now
            batch.trigger = "size" if len(batch.jobs) == limit else "bulk"
            self._ready.append(batch)
        self._on_ready()

    def _on_loop_or_undo(self, handle: Any) -> None:
        """Before a submit touches the loop (a timer, a batch to start): refuse one off its thread."""
        if self.off_loop is None or _get_running_loop() is self._loop:
            return
        batch = self._open
        batch.jobs.pop()
        if batch.futures is not None:
            batch.futures.pop()
            if not batch.futures:
                batch.futures = None
        else:
            handle._handle = None  # a Job: it may be submitted again
        self.pending.count -= 1
        self.off_loop()

    def add(self, job: Job[Any]) -> None:
        """Put a ready job into the open batch (a retry coming back, a delivery, a weighed job)."""
        if self._weigh is not None:
            self._add_weighed(job)
            return
        if self._open.futures is not None:  # the open batch holds items: they become Jobs too
            to_jobs(self._open, self._now())
        jobs = self._open.jobs
        jobs.append(job)
        if len(jobs) >= self._limit:
            self._close("size")
        elif len(jobs) == 1:
            self._opened(job)

    def _add_weighed(self, job: Job[Any]) -> None:
        try:
            weight = _checked_weight(self._weigh(job), job)  # type: ignore[misc]
        except Exception as exc:
            self._on_bad_weight(job, exc)
            return
        if self._open.jobs and self._open.weight + weight > self._max_weight:
            self._close("weight")
        batch = self._open
        batch.jobs.append(job)
        batch.weight += weight
        if len(batch.jobs) >= self._limit:
            self._close("size")
        elif batch.weight >= self._max_weight:
            self._close("weight")
        elif len(batch.jobs) == 1:
            self._opened(job)

    def _opened(self, job: Job[Any]) -> None:
        # The time trigger counts from the moment the batch's first job became ready.
        self._opened_at(job._ready_at)

    def _opened_at(self, ready_at: float) -> None:
        self._open.opened_at = ready_at
        if self.draining:
            self._open.due = "shutdown"
            self._on_ready()
        else:
            self._timer = self._loop.call_at(ready_at + self._interval, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._open.due = "time"
        self._on_ready()

    def _close(self, trigger: str) -> None:
        batch = self._open
        batch.trigger = trigger
        batch.closed_at = self._now()
        self._open = Batch()
        self._cancel_timer()
        self._ready.append(batch)
        self._on_ready()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- leaving -----------------------------------------------------------------------------

    def next_batch(self) -> Batch | None:
        """The batch to run next: a closed one first, then the open one once it is due."""
        if self._ready:
            batch = self._ready.popleft()
        elif self._open.jobs and self._open.due:
            batch = self._open
            batch.trigger = batch.due
            self._cancel_timer()
            self._open = Batch()
        else:
            return None
        self.triggers[batch.trigger] += 1
        return batch

    def flush_now(self) -> None:
        """``flush()``: the open batch is due now (later ones fill and leave as usual)."""
        if self._open.jobs and not self._open.due:
            self._open.due = "flush"
            self._on_ready()

    def resize(self, batch_size: int | None, interval: float | None) -> None:
        """New limits from now on: an open batch already that large leaves at once, split to fit."""
        if interval is not None:
            self._interval = interval  # batches opened from now on
        if batch_size is None:
            return
        self._limit = batch_size
        jobs = self._open.jobs
        if len(jobs) >= batch_size:
            to_jobs(self._open, self._now())
            jobs = self._open.jobs
        while len(jobs) >= batch_size:
            head, jobs = jobs[:batch_size], jobs[batch_size:]
            self._open.jobs = head
            self._close("size")
            self._open.jobs = jobs
            if jobs:
                self._open.opened_at = jobs[0]._ready_at
        if jobs and self._timer is None and not self._open.due:
            self._opened(jobs[0])

    def flush(self) -> None:
        """Shutdown began: the open batch is due now, and so is every later one."""
        self.draining = True
        if self._open.jobs and not self._open.due:
            self._open.due = "shutdown"
        self._on_ready()

    def take_all(self) -> list[Job[Any]]:
        """Empty the buffer (shutdown gave up on its jobs); returns them (items as Jobs)."""
        self._cancel_timer()
        now = self._now()
        for batch in (*self._ready, self._open):
            to_jobs(batch, now)
        jobs = [job for batch in (*self._ready, self._open) for job in batch.jobs]
        self._ready.clear()
        self._open = Batch()
        return jobs

    @property
    def buffered(self) -> int:
        """Jobs waiting for a batch to start."""
        return len(self._open.jobs) + sum(len(batch.jobs) for batch in self._ready)


def _checked_weight(value: object, job: Job[Any]) -> float:
    try:
        weight = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise WeightError(f"weight() of job {job.id!r} returned {value!r}, not a number") from None
    if not math.isfinite(weight) or weight < 0:
        raise WeightError(
            f"weight() of job {job.id!r} returned {value!r}: a weight must be a finite number >= 0"
        )
    return weight
