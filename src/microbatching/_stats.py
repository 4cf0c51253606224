"""The statistics snapshot, and the per-batch recorder behind its distributions.

The recorder is always on, so it is built to cost nothing per job: the engine calls
:meth:`Recorder.record` once per batch, which stores one small tuple in a bounded ring
(plus, only when an exporter asked for them, a few cumulative histogram buckets).
Percentiles are computed when somebody calls ``stats()``, never on the hot path.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypedDict

from .errors import BatchTimeoutError

if TYPE_CHECKING:
    from ._batch import Batch
    from ._job import Job

__all__ = ["DEFAULT_WINDOW", "BatchRecord", "Histogram", "PolicyStats", "Recorder", "Stats", "Summary"]

logger = logging.getLogger("microbatching")

#: How many of the most recent batches the distributions in :class:`Stats` cover.
DEFAULT_WINDOW = 1024
#: Jobs sampled per batch for the queue-wait estimate: the oldest, the newest, three between.
_WAIT_SAMPLES = 5

#: Bucket bounds of the cumulative histograms that exporters (Prometheus) read.
SIZE_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


# One recorded batch: (size, started_at, ended_at, sampled waits).
_Entry = tuple[int, float, float, tuple[float, ...]]


@dataclass(frozen=True)
class Summary:
    """A distribution over the sliding window: how many values, their mean, extremes and percentiles.

    All fields are ``0`` when ``count`` is ``0`` (nothing recorded yet).
    """

    count: int = 0
    mean: float = 0.0
    min: float = 0.0
    max: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0


@dataclass(frozen=True)
class PolicyStats:
    """What the adaptive policy has learnt and decided, as of the snapshot.

    ``cost_per_size`` maps batch sizes seen to the estimated seconds the processor takes
    for a batch of that size (noise smoothed, old data forgotten, a uniform slowdown
    applied to every size).  ``cap`` is the largest batch it forms now and ``cap_reason``
    why: ``"size"`` (``batch_size``), ``"knee"`` (the size of most jobs per second),
    ``"explore"`` (trying a larger size than any seen yet) or ``"cap"`` (the largest size
    whose batches fit the latency target).  ``wait`` is how long an open batch waits for
    company before it may leave (``0`` under ``objective="latency"``).  ``p99_latency`` is
    the observed 99th percentile of submit-to-result seconds over recent batches, and
    ``guard`` the share of ``latency_target`` the policy plans with (lowered while that
    percentile is above the target, raised back while it is well below).  ``shed`` counts
    the submits refused with ``OverloadedError`` (``shed=True``), and ``predicted_latency``
    is what a job submitted at the snapshot would take by the policy's estimate (``None``
    before the first batches).
    """

    objective: str
    latency_target: float
    cap: int
    cap_reason: str
    knee: int | None
    wait: float
    guard: float
    p99_latency: float
    cost_per_size: dict[int, float] = field(default_factory=dict)
    shed: int = 0
    predicted_latency: float | None = None


@dataclass(frozen=True, repr=False)
class Stats:
    """A snapshot of a batcher's counters and recent distributions, taken by ``stats()``.

    Counters run from the start: ``submitted``, ``completed``, ``failed`` (final failures),
    ``retried`` (retries scheduled), ``cancelled`` (dropped because their submitter
    cancelled them before their batch started, or abandoned by ``shutdown(timeout=...)``
    or ``shutdown(cancel=True)``; a durable queue keeps abandoned jobs for later),
    ``processor_errors`` (batches whose processor raised, timed out or returned the wrong
    number of results), ``deadline_exceeded`` (jobs failed because their ``deadline``
    passed, or would have, before they ran; also in ``failed``) and ``batches`` (dispatched, by trigger in
    ``batches_by_trigger``: ``size``, ``time``, ``weight``, ``shutdown``).

    Gauges are the state right now: ``pending`` counts accepted jobs not yet final:
    ``buffered`` (waiting for a batch), ``in_flight`` (in a running batch), ``retrying``
    (waiting out a retry delay), plus any held inside a user-supplied queue.

    Distributions cover the last ``window_batches`` batches (at most
    :data:`DEFAULT_WINDOW`): ``batch_size`` (jobs per batch), ``queue_wait`` (seconds from
    a job being ready, at submit or when its retry delay ended, to the start of its
    batch, per job), ``processing_time`` (seconds the processor took, per batch) and
    ``throughput`` (jobs per second over the window).  ``queue_wait`` is estimated from up
    to five jobs per batch (the oldest, the newest and three between, each standing for
    its share of the batch), so recording it costs nothing per job; its ``max`` (the
    oldest job's wait) is exact.
    """

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    processor_errors: int = 0
    #: Jobs failed with ``DeadlineExceededError`` (also counted in ``failed``).
    deadline_exceeded: int = 0
    pending: int = 0
    buffered: int = 0
    in_flight: int = 0
    retrying: int = 0
    batches: int = 0
    batches_by_trigger: dict[str, int] = field(default_factory=dict)
    #: The adaptive policy's model and decisions (``None`` under ``policy="fixed"``).
    policy: PolicyStats | None = None
    #: The raw per-batch records the distributions are computed from (on first access).
    window: tuple[tuple[int, float, float, tuple[float, ...]], ...] = field(default=(), repr=False)

    @cached_property
    def _summaries(self) -> WindowSummaries:
        return summarize_window(self.window)

    @property
    def batch_size(self) -> Summary:
        """Jobs per batch, over the window."""
        return self._summaries["batch_size"]

    @property
    def queue_wait(self) -> Summary:
        """Seconds from a job being ready to its batch starting, per job (estimated), over the window."""
        return self._summaries["queue_wait"]

    @property
    def processing_time(self) -> Summary:
        """Seconds the processor took per batch, over the window."""
        return self._summaries["processing_time"]

    @property
    def throughput(self) -> float:
        """Jobs per second over the window."""
        return self._summaries["throughput"]

    @property
    def window_batches(self) -> int:
        """How many recent batches the distributions cover."""
        return len(self.window)

    def as_dict(self) -> dict[str, Any]:
        """Every counter, gauge and distribution as plain values (for JSON, say)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "window"}
        out["batches_by_trigger"] = dict(self.batches_by_trigger)
        out["policy"] = None if self.policy is None else asdict(self.policy)
        for name in ("batch_size", "queue_wait", "processing_time"):
            out[name] = asdict(getattr(self, name))
        out["throughput"] = self.throughput
        out["window_batches"] = self.window_batches
        return out

    def __repr__(self) -> str:
        counters = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return (
            f"Stats({counters}, batch_size={self.batch_size!r}, queue_wait={self.queue_wait!r}, "
            f"processing_time={self.processing_time!r}, throughput={self.throughput!r}, "
            f"window_batches={self.window_batches})"
        )


class WindowSummaries(TypedDict):
    """The distributions of :class:`Stats`, computed from its window."""

    batch_size: Summary
    queue_wait: Summary
    processing_time: Summary
    throughput: float


class WindowCopy(TypedDict):
    """What the recorder adds to a :class:`Stats` snapshot: a copy of its window."""

    window: tuple[_Entry, ...]


@dataclass(frozen=True)
class BatchRecord:
    """What observers learn about one finished batch.

    ``waits`` are the queue waits of up to five sampled jobs, oldest first; ``error`` is
    the exception that failed the whole batch, or ``None`` (some jobs may still have
    failed one by one: ``failed_jobs``).
    """

    batch: Batch
    size: int
    started_at: float
    ended_at: float
    waits: tuple[float, ...]
    error: BaseException | None
    failed_jobs: int

    @property
    def duration(self) -> float:
        """Seconds from the processor call to its return (or failure)."""
        return self.ended_at - self.started_at


class Histogram:
    """A cumulative histogram with fixed bucket bounds, as Prometheus exposes one."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is the +Inf overflow
        self.count = 0
        self.sum = 0.0

    def add(self, value: float, times: int = 1) -> None:
        """Count ``value`` ``times`` times."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.count += times
        self.sum += value * times

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        counts = list(self.counts)  # one C-level copy: safe against a concurrent add
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class Histograms:
    """The cumulative histograms exporters read: batch size, queue wait, processing time."""

    __slots__ = ("batch_size", "processing_time", "queue_wait")

    def __init__(self) -> None:
        self.batch_size = Histogram(SIZE_BUCKETS)
        self.queue_wait = Histogram(SECONDS_BUCKETS)
        self.processing_time = Histogram(SECONDS_BUCKETS)


def _item_waits(batch: Batch, started: float, size: int) -> tuple[float, ...]:
    """Waits of a batch of items, which keep no timestamp each: its first item waited since the
    batch opened, its last since it closed; the samples between are spread evenly."""
    oldest = started - batch.opened_at
    newest = started - (batch.closed_at if batch.closed_at is not None else started)
    count = min(size, _WAIT_SAMPLES)
    if count == 1:
        return (oldest,)
    return tuple(oldest + (newest - oldest) * i / (count - 1) for i in range(count))


class Recorder:
    """Keeps the last ``window`` batches and feeds observers; one per engine."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._entries: deque[_Entry] = deque(maxlen=window)
        #: Called with a :class:`BatchRecord` after each batch (exporters subscribe here).
        self.observers: tuple[Callable[[BatchRecord], None], ...] = ()
        self.histograms: Histograms | None = None

    def enable_histograms(self) -> Histograms:
        """Start keeping cumulative histograms (from now on) and return them."""
        if self.histograms is None:
            self.histograms = Histograms()
        return self.histograms

    def subscribe(self, observer: Callable[[BatchRecord], None]) -> None:
        """Call ``observer`` with a :class:`BatchRecord` after every batch."""
        self.observers = (*self.observers, observer)

    def unsubscribe(self, observer: Callable[[BatchRecord], None]) -> None:
        """Stop calling ``observer`` (unknown observers are ignored)."""
        self.observers = tuple(o for o in self.observers if o is not observer)

    def record(
        self,
        batch: Batch,
        jobs: list[Job[Any]],
        results: Sequence[Any],
        ended: float,
        error: BaseException | None,
    ) -> None:
        """One batch finished (called by the engine once per batch, on the loop thread)."""
        size = len(jobs)
        started = batch.started_at
        if not size or started is None:
            return
        if batch.futures is not None or batch.bulk is not None:
            waits = _item_waits(batch, started, size)
        elif size <= _WAIT_SAMPLES:
            waits = tuple(started - job._ready_at for job in jobs)
        else:
            last, steps = size - 1, _WAIT_SAMPLES - 1
            waits = tuple(started - jobs[last * i // steps]._ready_at for i in range(_WAIT_SAMPLES))
        self._entries.append((size, started, ended, waits))
        if self.histograms is not None:
            self._add_to_histograms(self.histograms, size, ended - started, waits)
        if error is not None and isinstance(error, BatchTimeoutError):
            logger.warning("%s", error, extra=_fields(batch, size, started, ended, waits, error))
        elif logger.isEnabledFor(logging.DEBUG):
            _log_batch(batch, size, started, ended, waits, error)
        if self.observers:
            failed = size if error is not None else sum(isinstance(r, Exception) for r in results)
            self._notify(BatchRecord(batch, size, started, ended, waits, error, failed))

    @staticmethod
    def _add_to_histograms(h: Histograms, size: int, duration: float, waits: tuple[float, ...]) -> None:
        h.batch_size.add(size)
        h.processing_time.add(duration)
        share, extra = divmod(size, len(waits))
        for i, wait in enumerate(waits):
            h.queue_wait.add(wait, share + (i < extra))

    def _notify(self, record: BatchRecord) -> None:
        for observer in self.observers:
            _call_observer(observer, record)

    def summaries(self) -> WindowCopy:
        """A copy of the window for a :class:`Stats` snapshot (its percentiles are computed on first read)."""
        return WindowCopy(window=tuple(self._entries))  # one C-level copy: safe against a concurrent append


def _call_observer(observer: Callable[[BatchRecord], None], record: BatchRecord) -> None:
    try:
        observer(record)
    except Exception:  # an exporter's bug must never reach the engine
        logger.exception("a stats observer raised", extra={"batch_id": record.batch.id})


def summarize_window(entries: Sequence[_Entry]) -> WindowSummaries:
    """Percentiles of batch size, queue wait and processing time over ``entries``."""
    if not entries:
        empty = Summary()
        return WindowSummaries(batch_size=empty, queue_wait=empty, processing_time=empty, throughput=0.0)
    waits: list[tuple[float, float]] = []
    for size, _, _, sampled in entries:
        weight = size / len(sampled)
        waits.extend((wait, weight) for wait in sampled)
    span = max(e[2] for e in entries) - entries[0][1]
    total = sum(e[0] for e in entries)
    return WindowSummaries(
        batch_size=summarize([(float(e[0]), 1.0) for e in entries]),
        queue_wait=summarize(waits),
        processing_time=summarize([(e[2] - e[1], 1.0) for e in entries]),
        throughput=total / span if span > 0 else 0.0,
    )


def summarize(weighted: list[tuple[float, float]]) -> Summary:
    """The :class:`Summary` of ``(value, weight)`` pairs (weighted nearest-rank percentiles)."""
    if not weighted:
        return Summary()
    weighted.sort()
    total = sum(w for _, w in weighted)
    marks = {50: 0.0, 90: 0.0, 99: 0.0}
    pending = sorted(marks)
    running = 0.0
    for value, weight in weighted:
        running += weight
        while pending and running >= total * pending[0] / 100 - 1e-9:
            marks[pending.pop(0)] = value
        if not pending:
            break
    return Summary(
        count=round(total),
        mean=sum(v * w for v, w in weighted) / total,
        min=weighted[0][0],
        max=weighted[-1][0],
        p50=marks[50],
        p90=marks[90],
        p99=marks[99],
    )


def _fields(
    batch: Batch,
    size: int,
    started: float,
    ended: float,
    waits: tuple[float, ...],
    error: BaseException | None,
) -> dict[str, Any]:
    """The structured ``extra`` of a batch's log line: numbers and names, never job data."""
    return {
        "batch_id": batch.id,
        "batch_size": size,
        "trigger": batch.trigger,
        "duration_s": round(ended - started, 6),
        "max_queue_wait_s": round(max(waits), 6),
        "error_type": None if error is None else type(error).__name__,
    }


def _log_batch(
    batch: Batch,
    size: int,
    started: float,
    ended: float,
    waits: tuple[float, ...],
    error: BaseException | None,
) -> None:
    fields = _fields(batch, size, started, ended, waits, error)
    outcome = "done" if error is None else f"failed ({fields['error_type']})"
    logger.debug(
        "batch %d %s: %d jobs, trigger=%s, %.2f ms, oldest waited %.2f ms",
        batch.id,
        outcome,
        size,
        batch.trigger,
        fields["duration_s"] * 1e3,
        fields["max_queue_wait_s"] * 1e3,
        extra=fields,
    )
