"""The simulation under the adaptive-policy benchmark: cost curves, arrivals, one run on the real engine.

A run submits Poisson arrivals to a batcher on the virtual clock
(:class:`microbatching.testing.VirtualClockLoop`): the engine is the real one, time is
exact and no run sleeps real seconds.  The processor is one device: ``await
asyncio.sleep(curve(n))`` for a batch of ``n``, one batch at a time (a second concurrent
batch waits for the device, as on one GPU or one connection), optionally turning slower
part-way.  Every job's latency is submit to result.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from microbatching import AsyncMicroBatching, OverloadedError
from microbatching._stats import PolicyStats
from microbatching.testing import run_on_virtual_clock

__all__ = ["Config", "Curve", "Device", "Outcome", "Run", "arrivals", "fixed", "simulate"]


@dataclass(frozen=True)
class Curve:
    """Seconds the device takes for a batch of ``n``: ``per_call + per_job*n + square*n*n``,
    or with ``step``, ``per_call`` for every started group of ``step`` jobs."""

    name: str
    per_call: float
    per_job: float = 0.0
    square: float = 0.0
    step: int = 0

    def __call__(self, size: int) -> float:
        if self.step:
            return self.per_call * math.ceil(size / self.step) + self.per_job * size
        return self.per_call + self.per_job * size + self.square * size * size

    def knee(self, cap: int) -> int:
        """The smallest size up to ``cap`` with the most jobs per second."""
        best = max(size / self(size) for size in range(1, cap + 1))
        return next(size for size in range(1, cap + 1) if size / self(size) >= best * (1 - 1e-9))

    def capacity(self, cap: int) -> float:
        """Jobs per second at the knee."""
        knee = self.knee(cap)
        return knee / self(knee)


class Device:
    """The processor: one batch at a time, ``curve(n)`` seconds each (``slower`` times as long
    from ``slower_at`` seconds on)."""

    def __init__(self, curve: Curve, slower_at: float | None = None, slower: float = 1.0) -> None:
        self.curve = curve
        self.slower_at = slower_at
        self.slower = slower
        self.calls = 0
        self.start = 0.0
        self._lock = asyncio.Lock()

    def seconds(self, size: int, now: float) -> float:
        factor = self.slower if self.slower_at is not None and now - self.start >= self.slower_at else 1.0
        return self.curve(size) * factor

    async def process(self, items: list[Any]) -> list[Any]:
        async with self._lock:
            self.calls += 1
            loop = asyncio.get_running_loop()
            await asyncio.sleep(self.seconds(len(items), loop.time()))
        return items


class Batcher(Protocol):
    """What a run needs of a batcher: ours, or a peer's rule re-implemented."""

    def submit_nowait(self, item: Any) -> asyncio.Future[Any]: ...

    async def shutdown(self, timeout: float | None = None, *, cancel: bool = False) -> None: ...


@dataclass(frozen=True)
class Config:
    """One way of batching: a name, and how to make the batcher for a device."""

    name: str
    make: Callable[[Device], Batcher]

    @staticmethod
    def ours(name: str, **options: Any) -> Config:
        """The library with these options (items in, the device as processor)."""
        return Config(name, lambda device: AsyncMicroBatching(None, device.process, takes="items", **options))


def fixed(batch_size: int, interval: float, concurrency: int = 1) -> Config:
    """The fixed policy; interval 0 is natural batching capped at ``batch_size``."""
    name = f"fixed size {batch_size}, {interval * 1e3:g} ms, x{concurrency}"
    return Config.ours(
        name, batch_size=batch_size, batch_interval=interval, max_concurrent_batches=concurrency, retry=None
    )


def arrivals(phases: Sequence[tuple[float, float]], seed: int) -> list[float]:
    """Poisson arrival times (seconds from 0) through ``(seconds, jobs per second)`` phases."""
    rng = random.Random(seed)
    times: list[float] = []
    begin = 0.0
    for seconds, rate in phases:
        now = begin + rng.expovariate(rate)
        while now < begin + seconds:
            times.append(now)
            now += rng.expovariate(rate)
        begin += seconds
    return times


@dataclass
class Outcome:
    """What one run measured (seconds from the first arrival's phase start)."""

    span: float
    #: (completed at, latency) of every job that finished, in completion order.
    done: list[tuple[float, float]] = field(default_factory=list)
    #: Ages at the end of the run of the jobs that never finished.
    unfinished: list[float] = field(default_factory=list)
    shed: int = 0
    #: Jobs that finished by their deadline (runs with deadlines only).
    on_time: int = 0
    calls: int = 0
    #: (time, jobs not yet final, the policy's cap or None) every ``sample`` seconds.
    timeline: list[tuple[float, int, int | None]] = field(default_factory=list)
    #: The adaptive policy's state at the end of the arrivals (ours only).
    policy: PolicyStats | None = None

    @property
    def jobs(self) -> int:
        return len(self.done) + len(self.unfinished) + self.shed

    def latencies(self) -> list[float]:
        """Every job's latency; an unfinished one counts with its age at the end (a lower bound)."""
        return [latency for _, latency in self.done] + self.unfinished

    @functools.cached_property
    def p99(self) -> float:
        return _percentile(self.latencies(), 99)

    @property
    def mean(self) -> float:
        values = self.latencies()
        return sum(values) / len(values) if values else 0.0

    @property
    def on_time_share(self) -> float:
        """Jobs that finished by their deadline, of all submitted."""
        return self.on_time / max(1, self.jobs)

    @property
    def calls_per_job(self) -> float:
        return self.calls / max(1, len(self.done))

    @property
    def throughput(self) -> float:
        """Jobs completed per second of arrivals (capped by what arrived)."""
        return sum(1 for at, _ in self.done if at <= self.span) / self.span

    def windowed_p99(self, width: float = 0.25) -> list[tuple[float, float]]:
        """(window start, p99 of the jobs completed in it) for consecutive windows of ``width`` seconds."""
        windows: dict[int, list[float]] = {}
        for at, latency in self.done:
            windows.setdefault(int(at / width), []).append(latency)
        return [(index * width, _percentile(values, 99)) for index, values in sorted(windows.items())]

    def metrics(self) -> dict[str, float]:
        """The figures of the benchmark tables."""
        return {
            "jobs_per_s": self.throughput,
            "p99_ms": self.p99 * 1e3,
            "mean_ms": self.mean * 1e3,
            "calls_per_job": self.calls_per_job,
            "shed": float(self.shed),
            "unfinished": float(len(self.unfinished)),
            "on_time_pct": 100 * self.on_time_share,
        }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Run:
    """One run's inputs: arrivals, the device, how long to wait for the backlog after them."""

    times: Sequence[float]
    curve: Curve
    drain: float = 2.0
    slower_at: float | None = None
    slower: float = 1.0
    sample: float = 0.05
    #: Each job's deadline (seconds from its submit), or none.
    deadlines: Sequence[float] | None = None
    #: Whether the batcher is told the deadlines (else they are only measured).
    tell_deadlines: bool = True


def simulate(config: Config, run: Run) -> Outcome:
    """Run ``config`` through ``run`` on a fresh virtual clock."""
    return run_on_virtual_clock(_simulate(config, run))


async def _simulate(config: Config, run: Run) -> Outcome:
    loop = asyncio.get_running_loop()
    device = Device(run.curve, run.slower_at, run.slower)
    batcher = config.make(device)
    start = device.start = loop.time()
    span = run.times[-1] if run.times else 0.0
    outcome = Outcome(span=max(span, 1e-9))
    sampler = asyncio.ensure_future(_sample(batcher, outcome, start, run.sample))

    def finished(submitted: float, deadline: float, future: asyncio.Future[Any]) -> None:
        failed = future.cancelled() or future.exception() is not None
        if ended:  # abandoned by the shutdown that ends the run: counted as unfinished
            return
        if failed:
            outcome.shed += 1
            return
        now = loop.time()
        outcome.done.append((now - start, now - submitted))
        outcome.on_time += now - submitted <= deadline

    ended = False
    futures = []
    for index, at in enumerate(run.times):
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        deadline = math.inf if run.deadlines is None else run.deadlines[index]
        future = _submit(batcher, deadline if run.tell_deadlines else math.inf, outcome)
        if future is None:
            continue
        future.add_done_callback(functools.partial(finished, loop.time(), deadline))
        futures.append((loop.time(), future))
    if futures:
        await asyncio.wait([f for _, f in futures], timeout=run.drain)
    end = loop.time()
    if isinstance(batcher, AsyncMicroBatching):
        outcome.policy = batcher.stats().policy
    outcome.unfinished = [end - at for at, f in futures if not f.done()]
    ended = True
    sampler.cancel()
    await batcher.shutdown(cancel=True)
    outcome.calls = device.calls
    return outcome


def _submit(batcher: Batcher, deadline: float, outcome: Outcome) -> asyncio.Future[Any] | None:
    """Submit one job (with its deadline, if finite); ``None`` if the batcher shed it at once."""
    try:
        if math.isinf(deadline):
            return batcher.submit_nowait(None)
        assert isinstance(batcher, AsyncMicroBatching)
        return batcher.submit_nowait(None, deadline=deadline)
    except OverloadedError:
        outcome.shed += 1
        return None


async def _sample(batcher: Batcher, outcome: Outcome, start: float, every: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        pending, cap = _probe(batcher)
        outcome.timeline.append((loop.time() - start, pending, cap))
        await asyncio.sleep(every)


def _probe(batcher: Batcher) -> tuple[int, int | None]:
    if isinstance(batcher, AsyncMicroBatching):
        if batcher.state.value != "running":
            return 0, None
        stats = batcher.stats()
        return stats.pending, None if stats.policy is None else stats.policy.cap
    probe: Callable[[], tuple[int, int | None]] | None = getattr(batcher, "probe", None)
    return probe() if probe is not None else (0, None)
