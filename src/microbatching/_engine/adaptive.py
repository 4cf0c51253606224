"""The adaptive policy: batches formed from a latency target and a model of the processor.

The base is natural batching: when a slot is free, the batch takes what is waiting (under
``objective="latency"`` it leaves on the next loop turn).  On top of it the
:class:`Controller` keeps a :class:`CostModel` of the processor (seconds per batch size,
learnt from every batch) and caps the batch at the smallest of

- ``batch_size`` (a hard cap, as are ``max_batch_weight`` and ``max_concurrent_batches``);
- the *knee*: the size with the most jobs per second.  Past it a larger batch runs longer
  than the jobs it holds took to arrive, so a backlog never drains; below it capacity is
  lost.  Sizes larger than any seen are tried in bounded steps (``explore``);
- the *latency cap*, only when a batch at the knee alone would take half the target and
  no backlog waits: the largest batch that runs, after waiting out a batch ahead of it,
  within the target (never below the size that keeps up with arrivals).

Under ``objective="cost"`` an open batch also waits for company as long as the target
allows (the share of it the guard grants, less the batch's own predicted run).  A
feedback guard watches the observed 99th percentile of job latency: it plans with a
smaller share of the target while that percentile is above the target, and under
``"cost"`` with a larger one while it is well below.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any

from .._batch import Batch
from .._job import Job
from .._options import Options
from .._stats import BatchRecord, PolicyStats
from .buffer import Buffer
from .pending import Pending

__all__ = ["AdaptiveBuffer", "Controller", "CostModel"]

#: Sizes up to this each have their own estimate; above it sizes within ~15% share one.
_EXACT_SIZES = 64
_BUCKET_GROWTH = 1.15
#: Weight of a new observation in the slowdown all sizes share, and in a size's own estimate
#: (once it has a few; the shared term moves first, so a uniform slowdown reaches every size).
_DRIFT_ALPHA = 0.5
_ALPHA = 0.1
_FIRST_OBSERVATIONS = 3
#: An observation moves an estimate by at most this factor (a stray slow batch is not a trend).
_CLIP = math.log(2.5)
#: Estimates kept at most; the longest unobserved one goes first.
_MAX_BUCKETS = 128


def _clipped(log_ratio: float) -> float:
    return max(-_CLIP, min(_CLIP, log_ratio))


class _Bucket:
    __slots__ = ("log_seconds", "n", "seen", "size")

    def __init__(self, size: float, log_seconds: float, seen: int) -> None:
        self.size = size
        self.log_seconds = log_seconds
        self.n = 1
        self.seen = seen


def _bucket_key(size: int) -> int:
    if size <= _EXACT_SIZES:
        return size
    return _EXACT_SIZES + 1 + int(math.log(size / _EXACT_SIZES, _BUCKET_GROWTH))


class CostModel:
    """Seconds the processor takes per batch size, learnt online.

    Each size (or band of sizes) keeps an exponentially weighted mean of log seconds, so
    old data is forgotten; each observation's pull is clipped (noise and stray batches move
    it little).  A shared ``drift`` term takes part of every surprise, so a processor that
    turns slower at the sizes in use is taken as slower at every size.  Between sizes seen,
    seconds are interpolated; beyond the largest, extrapolated along the last slope.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}
        self._drift = 0.0
        self._surprises: deque[float] = deque(maxlen=3)
        self._observed = 0

    def observe(self, size: int, seconds: float) -> None:
        """One batch of ``size`` jobs took ``seconds``."""
        if size < 1 or not seconds > 0 or not math.isfinite(seconds):
            return
        self._observed += 1
        key = _bucket_key(size)
        bucket = self._buckets.get(key)
        logged = math.log(seconds)
        if bucket is None:
            self._add(key, _Bucket(float(size), logged - self._drift, self._observed))
            return
        if bucket.n >= _FIRST_OBSERVATIONS:
            # How far off the whole curve was (interpolated at this very size): shared by all
            # sizes.  Only established sizes say so: a new one's own estimate is still settling.
            # The median of the last few: one stray batch is not a slowdown, three in a row are.
            self._surprises.append(_clipped(logged - math.log(self.predict(size) or seconds)))
            self._drift += _DRIFT_ALPHA * sorted(self._surprises)[len(self._surprises) // 2]
        # What is left is this size's own: its estimate learns it (slowly, once it has a few).
        alpha = 1.0 / (bucket.n + 1) if bucket.n < _FIRST_OBSERVATIONS else _ALPHA
        bucket.log_seconds += alpha * _clipped(logged - self._drift - bucket.log_seconds)
        bucket.size += alpha * (size - bucket.size)
        bucket.n += 1
        bucket.seen = self._observed

    def _add(self, key: int, bucket: _Bucket) -> None:
        if len(self._buckets) >= _MAX_BUCKETS:
            stalest = min(self._buckets, key=lambda k: self._buckets[k].seen)
            del self._buckets[stalest]
        self._buckets[key] = bucket

    def points(self) -> list[tuple[float, float]]:
        """``(size, estimated seconds)`` of every size seen, smallest first."""
        drift = self._drift
        return sorted((b.size, math.exp(b.log_seconds + drift)) for b in self._buckets.values())

    def predict(self, size: float) -> float | None:
        """Estimated seconds for a batch of ``size`` (``None`` before the first batch)."""
        return _interpolate(self.points(), size)

    def seen(self, least: int = 1) -> list[tuple[float, float]]:
        """The points of sizes observed at least ``least`` times."""
        drift = self._drift
        return sorted(
            (b.size, math.exp(b.log_seconds + drift)) for b in self._buckets.values() if b.n >= least
        )


def _interpolate(points: list[tuple[float, float]], size: float) -> float | None:
    if not points:
        return None
    if size <= points[0][0]:
        return points[0][1]
    for (s0, t0), (s1, t1) in itertools.pairwise(points):
        if size <= s1:
            return t0 + (t1 - t0) * (size - s0) / (s1 - s0) if s1 > s0 else t1
    last_size, last_seconds = points[-1]
    if len(points) == 1:  # one size seen: assume seconds grow in proportion (an upper bound if affine)
        return last_seconds * size / last_size
    prev_size, prev_seconds = points[-2]
    slope = max(0.0, (last_seconds - prev_seconds) / (last_size - prev_size))
    return last_seconds + slope * (size - last_size)


#: Before any batch, and above the largest size seen, grow the cap by these steps.
_FIRST_CAP = 32
_EXPLORE_STEP = 2.0
#: How much fewer jobs per second than the best make the largest size measured past the knee.
_PAST_KNEE = 0.05
#: Every so many batches cut at the knee, one may be this much larger (a look past it).
_PROBE_EVERY = 16
_PROBE_STEP = 1.25
#: Sizes within this share of the best jobs per second count as tied: the largest wins (on
#: a cost that rises in steps, a larger batch fills its last step for free).
_KNEE_TIE = 0.005
#: Latency samples kept (five per batch), and how often the guard looks at them.
_LATENCY_SAMPLES = 1280
_GUARD_EVERY = 8
_GUARD_DOWN = 0.85
_GUARD_UP = 1.05
_GUARD_FLOOR = 0.2
#: The band of observed p99 (as shares of the target) the guard steers into, per objective:
#: under "latency" it only keeps p99 below the target; under "cost" it also lets batches
#: wait longer while p99 is well below it.  And the share each objective starts from.
_GUARD_BAND = {"latency": (0.8, 1.0), "cost": (0.85, 0.95)}
_GUARD_START = {"latency": 1.0, "cost": 0.8}
#: The margin of capacity over the arrival rate the cap keeps.
_KEEP_UP = 1.1
#: Batches the arrival rate is measured over.
_RATE_BATCHES = 32


class Controller:
    """Decides the adaptive policy's cap and wait from the cost model and observed latency."""

    def __init__(self, options: Options) -> None:
        if options.latency_target is None:
            raise ValueError("the adaptive policy needs latency_target")
        self.target = options.latency_target
        self.objective = options.objective
        self.hard_cap = options.batch_size
        self.model = CostModel()
        self.guard = _GUARD_START[self.objective]
        self.cap = min(self.hard_cap, _FIRST_CAP)
        self.cap_reason = "size" if self.cap == self.hard_cap else "explore"
        self.knee: int | None = None
        self._probes = 0
        self._latencies: deque[tuple[float, float]] = deque(maxlen=_LATENCY_SAMPLES)
        self._batches = 0
        self._starts: deque[tuple[float, int]] = deque(maxlen=_RATE_BATCHES)
        #: How many jobs wait for a batch to start (the buffer's count, set by it).
        self.backlog: Callable[[], int] = lambda: 0
        #: Submits refused with OverloadedError (``shed=True``).
        self.shed = 0
        #: The curve and drain rate of the last decision, replaced whole (never changed in
        #: place): submitters on other threads read them to predict a job's latency.
        self._curve: list[tuple[float, float]] = []
        self._drain_rate = 0.0

    # -- learning ------------------------------------------------------------------------

    def observe(self, record: BatchRecord) -> None:
        """One batch finished: learn its cost and its jobs' latency, then decide again."""
        if record.error is None:
            self.model.observe(record.size, record.duration)
        self._starts.append((record.started_at, record.size))
        share = record.size / len(record.waits)
        self._latencies.extend((wait + record.duration, share) for wait in record.waits)
        self._batches += 1
        if self._batches % _GUARD_EVERY == 0:
            self._adjust_guard()
        self._decide()

    def _adjust_guard(self) -> None:
        p99 = _weighted_p99(self._latencies)
        low, high = _GUARD_BAND[self.objective]
        if p99 > high * self.target:
            self.guard = max(_GUARD_FLOOR, self.guard * _GUARD_DOWN)
        elif p99 < low * self.target:
            self.guard = min(1.0, self.guard * _GUARD_UP)

    # -- deciding ------------------------------------------------------------------------

    def _decide(self) -> None:
        cap, reason = self.hard_cap, "size"
        knee_cap = self._knee_cap()
        limits = [knee_cap]
        if self._knee_too_slow(knee_cap[0]) and self.backlog() <= knee_cap[0]:
            # Below the knee only when its batch alone would take half the target, and only
            # while no backlog waits (one drains fastest at the knee); never below what keeps
            # up with arrivals: a smaller cap would only grow the backlog.
            limits.append((max(self._latency_cap(), self._keeping_up(knee_cap[0])), "cap"))
        for limit, why in limits:
            if limit < cap:
                cap, reason = limit, why
        self.cap, self.cap_reason = max(1, cap), reason
        self._remember_drain_rate()

    def _remember_drain_rate(self) -> None:
        """The curve, and the jobs per second a backlog drains at: batches of the cap.

        Beyond the largest size seen, seconds follow the last slope, or stay flat while one
        size only is known: a job is shed on evidence of overload, not on a guess of it.
        """
        curve = self.model.points()
        if len(curve) == 1:
            curve = [curve[0], (curve[0][0] + 1.0, curve[0][1])]
        seconds = _interpolate(curve, self.cap)
        self._curve = curve
        self._drain_rate = self.cap / seconds if seconds else 0.0

    def predicted_latency(self, waiting: int) -> float | None:
        """Seconds a job submitted now would take to its result, with ``waiting`` jobs ahead of it.

        Those jobs drain at the knee's rate; then the job's own batch runs.  ``None`` before the
        first batch (nothing is known of the processor yet).  Any thread may call it.
        """
        curve, rate = self._curve, self._drain_rate
        if not rate or self._batches < _GUARD_EVERY:  # too few batches seen to judge
            return None
        own = _interpolate(curve, min(self.cap, waiting + 1)) or 0.0
        return waiting / rate + own

    def _knee_too_slow(self, knee: int) -> bool:
        seconds = self.model.predict(knee)
        return seconds is not None and seconds > self.target / 2

    def _knee_cap(self) -> tuple[int, str]:
        """The knee, or a step past the largest size measured while jobs per second still rise
        (or are flat) there."""
        points = [(s, t) for s, t in self.model.seen(least=_FIRST_OBSERVATIONS) if s <= self.hard_cap]
        if not points:
            return _FIRST_CAP, "explore"
        best = max(size / seconds for size, seconds in points)
        knee = max(size for size, seconds in points if size / seconds >= best * (1 - _KNEE_TIE))
        self.knee = round(knee)
        largest, its_seconds = points[-1]
        if knee >= largest * 0.999:  # still rising at the largest size measured: look further
            return max(_FIRST_CAP, math.ceil(knee * _EXPLORE_STEP)), "explore"
        # Past the knee only once the largest size measured is clearly slower per job than the
        # best: a few percent is what one batch caught by a slowdown before the shared drift
        # took it leaves in that size's estimate, and a cap at the knee would never run it
        # again to correct it.  Flat there: look a little further.
        if largest / its_seconds >= best * (1 - _PAST_KNEE):
            return min(self.hard_cap, math.ceil(largest * _PROBE_STEP)), "explore"
        return self.knee, "knee"

    def probe(self, cap: int) -> tuple[int, str]:
        """The size of a batch cut at the knee: every so often a little larger (a look past it)."""
        self._probes += 1
        if self._probes % _PROBE_EVERY == 0:
            return min(self.hard_cap, math.ceil(cap * _PROBE_STEP)), "explore"
        return cap, "knee"

    def _latency_cap(self) -> int:
        """The largest batch that runs within the target after a batch of its size ahead of it."""
        budget = self.guard * self.target / 2
        predict = self.model.predict
        first = predict(1)
        if first is None:
            return self.hard_cap
        if first > budget:
            return 1
        low, high = 1, self.hard_cap
        while low < high:  # the largest size whose predicted seconds fit the budget
            mid = (low + high + 1) // 2
            if (predict(mid) or 0.0) <= budget:
                low = mid
            else:
                high = mid - 1
        return low

    def _keeping_up(self, ceiling: int) -> int:
        """The smallest size (up to ``ceiling``) whose jobs per second exceed the arrival rate."""
        needed = _KEEP_UP * self.arrival_rate()
        predict = self.model.predict
        if needed <= 0:
            return 1
        low, high = 1, max(1, ceiling)
        while low < high:  # jobs per second rise with size up to the knee
            mid = (low + high) // 2
            if mid / (predict(mid) or math.inf) >= needed:
                high = mid
            else:
                low = mid + 1
        return low

    def wait(self) -> float:
        """Seconds a newly opened batch waits for company (``0`` unless the objective is cost)."""
        if self.objective != "cost":
            return 0.0
        expected = min(self.cap, max(1.0, self.arrival_rate() * self.target))
        seconds = self.model.predict(expected)
        if seconds is None:
            return 0.0
        return max(0.0, self.guard * self.target - seconds)

    def arrival_rate(self) -> float:
        """Jobs per second over the last batches (what arrives, unless the processor falls behind)."""
        if len(self._starts) < 2:
            return 0.0
        span = self._starts[-1][0] - self._starts[0][0]
        jobs = sum(size for _, size in list(self._starts)[1:])
        return jobs / span if span > 0 else 0.0

    def snapshot(self) -> PolicyStats:
        """What the policy knows and decided, for ``stats()``."""
        return PolicyStats(
            objective=self.objective,
            latency_target=self.target,
            cap=self.cap,
            cap_reason=self.cap_reason,
            knee=self.knee,
            wait=self.wait(),
            guard=self.guard,
            p99_latency=_weighted_p99(self._latencies),
            cost_per_size={round(size): seconds for size, seconds in self.model.points()},
            shed=self.shed,
            predicted_latency=self.predicted_latency(self.backlog()),
        )


def _weighted_p99(samples: deque[tuple[float, float]]) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    total = sum(weight for _, weight in ordered)
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= 0.99 * total:
            return value
    return ordered[-1][0]


class AdaptiveBuffer(Buffer):
    """The buffer under the adaptive policy.

    Batches are cut to the controller's cap when they leave, not when they close: jobs
    that wait in a backlog run in batches of the cap of the moment they start (a batch
    closed earlier under a smaller cap would otherwise stay small).  The open batch may
    leave once it holds the cap, or when the controller's wait is over; until a slot takes
    it, it keeps filling up to ``batch_size``.

    Once jobs carry deadlines (``deadlines``), a batch leaving takes the jobs with the
    earliest deadlines of everything waiting (a job without one counts as due
    ``latency_target`` after it became ready, so none waits for ever behind them);
    a job that would finish late even so, by the model's estimate of the batch's run, fails
    with ``DeadlineExceededError`` instead of running; and an open batch waiting for company
    leaves early (trigger ``"deadline"``) when waiting longer would make its earliest job late.
    """

    __slots__ = ("_controller", "_fail_late", "_hard_cap", "deadlines")

    def __init__(
        self,
        options: Options,
        pending: Pending,
        on_ready: Callable[[], None],
        on_bad_weight: Callable[[Job[Any], BaseException], None],
        controller: Controller,
        fail_late: Callable[[Job[Any], str], None],
    ) -> None:
        super().__init__(
            controller.cap, 0.0, options.weight, options.max_batch_weight, pending, on_ready, on_bad_weight
        )
        self._controller = controller
        self._hard_cap = options.batch_size
        self._fail_late = fail_late
        #: Some job was submitted with a deadline: batches are formed earliest deadline first.
        self.deadlines = False
        controller.backlog = lambda: self.buffered
        self.triggers.update({"knee": 0, "explore": 0, "cap": 0, "idle": 0, "target": 0, "deadline": 0})

    # -- deadlines ---------------------------------------------------------------------------

    def admit(self, job: Job[Any]) -> None:
        """As the fixed buffer's, then (with deadlines) the open batch's wait is kept within the job's."""
        Buffer.admit(self, job)
        if self.deadlines:
            self._mind_deadline(job)

    def add(self, job: Job[Any]) -> None:
        """As the fixed buffer's, then (with deadlines) the open batch's wait is kept within the job's."""
        Buffer.add(self, job)
        if self.deadlines:
            self._mind_deadline(job)

    def _mind_deadline(self, job: Job[Any]) -> None:
        """If ``job`` waits in the open batch, leave by when its batch must start to finish in time."""
        deadline = job.deadline
        timer, batch = self._timer, self._open
        if deadline is None or timer is None or batch.due or job not in batch.jobs[-1:]:
            return
        leave_by = deadline - (self._controller.model.predict(self._limit) or 0.0)
        if leave_by >= timer.when():
            return
        self._cancel_timer()
        if leave_by <= self._now():
            self._due("deadline")
        else:
            self._timer = self._loop.call_at(leave_by, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        self._due("deadline")

    def _earliest_first(self, batch: Batch) -> None:
        """Fill ``batch`` with every waiting job, earliest deadline first, minus the hopeless ones.

        Batches of items (which carry no deadlines) and the open batch while it still waits
        for company are left as they are.
        """
        pool = batch.jobs
        kept: deque[Batch] = deque()
        for waiting in self._ready:
            if _holds_jobs(waiting):
                pool.extend(waiting.jobs)
            else:
                kept.append(waiting)
        self._ready = kept
        if self._open.jobs and self._open.due and _holds_jobs(self._open):
            pool.extend(self._open.jobs)
            self._open = Batch()
            self._cancel_timer()
        pool.sort(key=self._due_by)
        batch.jobs = self._hopeless(pool)

    def _hopeless(self, pool: list[Job[Any]]) -> list[Job[Any]]:
        """``pool`` (in order) without the jobs that would finish late in this batch: those fail."""
        now, predict, cap = self._now(), self._controller.model.predict, self._controller.cap
        kept: list[Job[Any]] = []
        failed = 0
        for index, job in enumerate(pool):
            seconds = predict(min(cap, len(pool) - failed)) or 0.0
            if self._due_by(job) >= now + seconds:  # in time, and so is every job after it
                return kept + pool[index:]
            if job.deadline is None:  # due by the target only: late, but it has no deadline to miss
                kept.append(job)
                continue
            late = (
                f"it would finish {now + seconds - job.deadline:.3f}s after its deadline "
                f"(its batch's run predicted at {seconds:.3f}s)"
            )
            self._fail_late(job, late)
            failed += 1
        return kept

    def _due_by(self, job: Job[Any]) -> float:
        """When ``job`` should have its result: its deadline, or without one the latency target
        after it became ready (so jobs without deadlines are not held back for ever)."""
        deadline = job.deadline
        return job._ready_at + self._controller.target if deadline is None else deadline

    def resize(self, batch_size: int | None, interval: float | None) -> None:
        """A new hard ``batch_size`` (the interval is the policy's own: ignored)."""
        if batch_size is not None:
            self._hard_cap = self._controller.hard_cap = batch_size
            self._controller.cap = min(self._controller.cap, batch_size)
            Buffer.resize(self, batch_size, None)

    def _opened_at(self, ready_at: float) -> None:
        self._interval = self._controller.wait()
        self._limit = self._controller.cap
        if len(self._open.jobs) >= self._limit:  # already holds the cap (a cap of 1, say)
            self._open.opened_at = ready_at
            self._due(self._controller.cap_reason)
        else:
            super()._opened_at(ready_at)

    def _on_timer(self) -> None:
        self._timer = None
        self._due("target" if self._interval > 0 else "idle")

    def _close(self, trigger: str) -> None:
        if trigger == "size" and self._limit < self._hard_cap:  # it holds the cap: it may leave
            self._due(self._controller.cap_reason)
        else:
            super()._close(trigger)

    def _due(self, why: str) -> None:
        """The open batch may leave now; until a slot takes it, it fills up to ``batch_size``."""
        self._cancel_timer()
        self._limit = self._hard_cap
        if not self._open.due:
            self._open.due = why
        self._on_ready()

    def next_batch(self) -> Batch | None:
        """The next batch (as the fixed buffer picks it, or earliest deadline first), cut to the cap."""
        while True:
            if self._ready:
                batch = self._ready.popleft()
            elif self._open.jobs and self._open.due:
                batch, self._open = self._open, Batch()
                batch.trigger = batch.due
                self._cancel_timer()
            else:
                return None
            if not self.deadlines or self._weigh is not None or not _holds_jobs(batch):
                break
            self._earliest_first(batch)
            if batch.jobs:
                break
        cap, why = self._controller.cap, self._controller.cap_reason
        if len(batch.jobs) > cap:
            if why == "knee":
                cap, why = self._controller.probe(cap)
            if len(batch.jobs) > cap:
                self._ready.appendleft(_cut(batch, cap, why))
            batch.trigger = why
        self.triggers[batch.trigger] += 1
        return batch


def _cut(batch: Batch, size: int, why: str) -> Batch:
    """Keep the first ``size`` jobs in ``batch``; the rest, in order, as a new batch ready to run
    (a piece of the backlog the cap cut: it leaves for the same reason)."""
    rest = Batch()
    rest.jobs, batch.jobs = batch.jobs[size:], batch.jobs[:size]
    if batch.futures is not None:
        rest.futures, batch.futures = batch.futures[size:], batch.futures[:size]
    if batch.bulk is not None:
        rest.bulk, rest.offset = batch.bulk, batch.offset + size
    is_jobs = batch.futures is None and batch.bulk is None
    rest.opened_at = rest.jobs[0]._ready_at if is_jobs else batch.opened_at
    rest.closed_at, rest.trigger = batch.closed_at, why
    return rest


def _holds_jobs(batch: Batch) -> bool:
    """Whether ``batch`` holds Jobs (not items, nor a ``submit_many`` call's items)."""
    return batch.futures is None and batch.bulk is None
