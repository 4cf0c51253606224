"""The benchmark workloads, each a function returning one run's :data:`~harness.Metrics`.

Every implementation of a workload does the same work through its own public API:
ours (``AsyncMicroBatching.submit_job_nowait``, ``@batch``, ``MicroBatching.submit_job``),
the reference batcher of ``reference.py`` and, where it applies, aiodataloader.  Every
result is checked (a wrong or missing result raises :class:`BenchmarkError`); throughput
counts from the first submit to the last result.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from harness import Metrics, percentile
from reference import ReferenceBatcher

import microbatching
from microbatching import AsyncMicroBatching, Job, MicroBatching

__all__ = ["BenchmarkError", "have_aiodataloader"]

clock = time.perf_counter
#: CPU seconds of this process: steadier than wall time when other processes share the cores.
cpu_clock = time.process_time


class BenchmarkError(AssertionError):
    """A workload produced a wrong or missing result (correctness, not speed)."""


def have_aiodataloader() -> bool:
    """Whether the aiodataloader peer is installed (``python -m pip install '.[bench]'``)."""
    try:
        import aiodataloader  # noqa: F401
    except ImportError:
        return False
    return True


class Counter:
    """Counts the batches a processor sees (the same few instructions in every implementation)."""

    def __init__(self) -> None:
        self.batches = 0


def _check(ok: int, expected: int, what: str) -> None:
    if ok != expected:
        raise BenchmarkError(f"{what}: {ok} of {expected} results were correct")


def _latency_metrics(n: int, elapsed: float, latencies: list[float], batches: int) -> Metrics:
    return {
        "jobs_per_s": n / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "mean_batch": n / batches,
    }


# -- processors --------------------------------------------------------------------------


def _job_doubler(counter: Counter) -> Callable[[list[Job[int]]], Awaitable[list[int]]]:
    async def process(jobs: list[Job[int]]) -> list[int]:
        counter.batches += 1
        return [job.data * 2 for job in jobs]

    return process


def _item_doubler(counter: Counter) -> Callable[[list[int]], Awaitable[list[int]]]:
    async def process(batch: list[int]) -> list[int]:
        counter.batches += 1
        return [x * 2 for x in batch]

    return process


def _ours(counter: Counter, size: int, interval: float, **options: Any) -> AsyncMicroBatching:
    batcher = AsyncMicroBatching(
        None, _job_doubler(counter), batch_size=size, batch_interval=interval, retry=None, **options
    )
    batcher.start()
    return batcher


# -- fan-in: many tasks, each awaiting its own result ------------------------------------


async def _ours_worker(batcher: AsyncMicroBatching, xs: Iterable[int], latencies: list[float]) -> int:
    submit = batcher.submit_job_nowait
    ok = 0
    for x in xs:
        start = clock()
        result = await submit(Job(None, x))
        latencies.append(clock() - start)
        ok += result == x * 2
    return ok


async def _call_worker(
    submit: Callable[[int], Awaitable[int]], xs: Iterable[int], latencies: list[float]
) -> int:
    ok = 0
    for x in xs:
        start = clock()
        result = await submit(x)
        latencies.append(clock() - start)
        ok += result == x * 2
    return ok


async def _fan_in(
    worker: Callable[[range, list[float]], Awaitable[int]], n: int, tasks: int, counter: Counter, what: str
) -> Metrics:
    latencies: list[float] = []
    start, cpu_start = clock(), cpu_clock()
    oks = await asyncio.gather(*(worker(range(i, n, tasks), latencies) for i in range(tasks)))
    elapsed, cpu = clock() - start, cpu_clock() - cpu_start
    _check(sum(oks), n, what)
    return {**_latency_metrics(n, elapsed, latencies, counter.batches), "cpu_jobs_per_s": n / cpu}


async def fan_in_ours(n: int, tasks: int, size: int, interval: float) -> Metrics:
    """Fan-in through ``AsyncMicroBatching.submit_job_nowait``."""
    counter = Counter()
    batcher = _ours(counter, size, interval)
    metrics = await _fan_in(lambda xs, lat: _ours_worker(batcher, xs, lat), n, tasks, counter, "fan-in ours")
    await batcher.shutdown()
    return metrics


async def fan_in_reference(n: int, tasks: int, size: int, interval: float) -> Metrics:
    """Fan-in through the bare-bones reference batcher."""
    counter = Counter()
    batcher = ReferenceBatcher(_item_doubler(counter), size, interval)
    metrics = await _fan_in(
        lambda xs, lat: _call_worker(batcher.submit, xs, lat), n, tasks, counter, "fan-in reference"
    )
    await batcher.close()
    return metrics


async def fan_in_aiodataloader(n: int, tasks: int, size: int, interval: float) -> Metrics:
    """Fan-in through aiodataloader (it dispatches on the next loop tick; no interval)."""
    from aiodataloader import DataLoader

    counter = Counter()
    loader: DataLoader[int, int] = DataLoader(_item_doubler(counter), max_batch_size=size, cache=False)
    return await _fan_in(
        lambda xs, lat: _call_worker(loader.load, xs, lat), n, tasks, counter, "fan-in aiodataloader"
    )


async def fan_in_decorator(n: int, tasks: int, size: int, interval: float) -> Metrics:
    """Fan-in through an ``@microbatching.batch`` function."""
    counter = Counter()

    @microbatching.batch(batch_size=size, batch_interval=interval)
    async def double(batch: list[int]) -> list[int]:
        counter.batches += 1
        return [x * 2 for x in batch]

    return await _fan_in(lambda xs, lat: _call_worker(double, xs, lat), n, tasks, counter, "decorator")


# -- bulk: one coroutine submits everything, then awaits everything ----------------------


async def _await_all(futures: list[asyncio.Future[int]]) -> int:
    ok = 0
    for x, future in enumerate(futures):
        ok += await future == x * 2
    return ok


async def bulk_ours(n: int, size: int, interval: float) -> Metrics:
    """Bulk through ``AsyncMicroBatching.submit_job_nowait``."""
    counter = Counter()
    batcher = _ours(counter, size, interval)
    submit = batcher.submit_job_nowait
    start, cpu_start = clock(), cpu_clock()
    futures = [submit(Job(None, x)) for x in range(n)]
    ok = await _await_all(futures)
    elapsed, cpu = clock() - start, cpu_clock() - cpu_start
    _check(ok, n, "bulk ours")
    await batcher.shutdown()
    return {"jobs_per_s": n / elapsed, "cpu_jobs_per_s": n / cpu, "mean_batch": n / counter.batches}


def _ours_items(counter: Counter, size: int, interval: float) -> AsyncMicroBatching:
    batcher = AsyncMicroBatching(
        None, _item_doubler(counter), batch_size=size, batch_interval=interval, retry=None, takes="items"
    )
    batcher.start()
    return batcher


async def bulk_items_ours(n: int, size: int, interval: float) -> Metrics:
    """Bulk through ``AsyncMicroBatching.submit_nowait(item)``, the processor taking items."""
    counter = Counter()
    batcher = _ours_items(counter, size, interval)
    submit = batcher.submit_nowait
    start, cpu_start = clock(), cpu_clock()
    futures = [submit(x) for x in range(n)]
    ok = await _await_all(futures)
    elapsed, cpu = clock() - start, cpu_clock() - cpu_start
    _check(ok, n, "bulk ours, items")
    await batcher.shutdown()
    return {"jobs_per_s": n / elapsed, "cpu_jobs_per_s": n / cpu, "mean_batch": n / counter.batches}


async def bulk_many_ours(n: int, size: int, interval: float) -> Metrics:
    """Bulk through one ``AsyncMicroBatching.submit_many(items)`` call."""
    counter = Counter()
    batcher = _ours_items(counter, size, interval)
    start, cpu_start = clock(), cpu_clock()
    results = await batcher.submit_many(range(n))
    ok = sum(result == x * 2 for x, result in enumerate(results))
    elapsed, cpu = clock() - start, cpu_clock() - cpu_start
    _check(ok, n, "bulk ours, submit_many")
    await batcher.shutdown()
    return {"jobs_per_s": n / elapsed, "cpu_jobs_per_s": n / cpu, "mean_batch": n / counter.batches}


async def fan_in_items_ours(n: int, tasks: int, size: int, interval: float) -> Metrics:
    """Fan-in through ``AsyncMicroBatching.submit_nowait(item)``, the processor taking items."""
    counter = Counter()
    batcher = _ours_items(counter, size, interval)
    metrics = await _fan_in(
        lambda xs, lat: _call_worker(batcher.submit_nowait, xs, lat), n, tasks, counter, "fan-in ours, items"
    )
    await batcher.shutdown()
    return metrics


async def bulk_reference(n: int, size: int, interval: float) -> Metrics:
    """Bulk through the reference batcher."""
    counter = Counter()
    batcher = ReferenceBatcher(_item_doubler(counter), size, interval)
    submit = batcher.submit
    start, cpu_start = clock(), cpu_clock()
    futures = [submit(x) for x in range(n)]
    ok = await _await_all(futures)
    elapsed, cpu = clock() - start, cpu_clock() - cpu_start
    _check(ok, n, "bulk reference")
    await batcher.close()
    return {"jobs_per_s": n / elapsed, "cpu_jobs_per_s": n / cpu, "mean_batch": n / counter.batches}


async def bulk_reference_jobs(n: int, size: int, interval: float) -> Metrics:
    """Bulk through the reference batcher fed ``Job`` objects: the floor cost of our API's extra object."""
    counter = Counter()

    async def process(jobs: list[Job[int]]) -> list[int]:
        counter.batches += 1
        return [job.data * 2 for job in jobs]

    batcher = ReferenceBatcher(process, size, interval)
    submit = batcher.submit
    start, cpu_start = clock(), cpu_clock()
    futures = [submit(Job(None, x)) for x in range(n)]
    ok = await _await_all(futures)
    elapsed, cpu = clock() - start, cpu_clock() - cpu_start
    _check(ok, n, "bulk reference+Job")
    await batcher.close()
    return {"jobs_per_s": n / elapsed, "cpu_jobs_per_s": n / cpu, "mean_batch": n / counter.batches}


async def bulk_aiodataloader(n: int, size: int, interval: float) -> Metrics:
    """Bulk through aiodataloader."""
    from aiodataloader import DataLoader

    counter = Counter()
    loader: DataLoader[int, int] = DataLoader(_item_doubler(counter), max_batch_size=size, cache=False)
    load = loader.load
    start, cpu_start = clock(), cpu_clock()
    futures = [load(x) for x in range(n)]
    ok = await _await_all(futures)
    elapsed, cpu = clock() - start, cpu_clock() - cpu_start
    _check(ok, n, "bulk aiodataloader")
    return {"jobs_per_s": n / elapsed, "cpu_jobs_per_s": n / cpu, "mean_batch": n / counter.batches}


# -- sync: threads submitting through MicroBatching --------------------------------------


def _sync_job_doubler(counter: Counter) -> Callable[[list[Job[int]]], list[int]]:
    def process(jobs: list[Job[int]]) -> list[int]:
        counter.batches += 1
        return [job.data * 2 for job in jobs]

    return process


def sync_ours(n: int, threads: int, size: int, interval: float, async_processor: bool) -> Metrics:
    """``threads`` threads each submit their share through ``MicroBatching.submit_job``, then wait.

    With ``async_processor`` the processor is the ``async def`` of the async workloads (run on
    the batcher's loop); otherwise a plain function (run in a worker thread, the usual case).
    """
    counter = Counter()
    processor = _job_doubler(counter) if async_processor else _sync_job_doubler(counter)
    batcher = MicroBatching(None, processor, batch_size=size, batch_interval=interval, retry=None)
    batcher.start()
    barrier = threading.Barrier(threads + 1)
    oks = [0] * threads

    def submitter(index: int) -> None:
        xs = range(index, n, threads)
        barrier.wait()
        handles = [batcher.submit_job(Job(None, x)) for x in xs]
        oks[index] = sum(handle.result() == x * 2 for x, handle in zip(xs, handles, strict=True))

    workers = [threading.Thread(target=submitter, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = clock()
    for worker in workers:
        worker.join()
    elapsed = clock() - start
    batcher.shutdown()
    _check(sum(oks), n, "sync ours")
    return {"jobs_per_s": n / elapsed, "mean_batch": n / counter.batches}


# -- timer precision ----------------------------------------------------------------------


def _lateness_metrics(lateness: list[float]) -> Metrics:
    return {
        "late_p50_ms": percentile(lateness, 50) * 1e3,
        "late_p99_ms": percentile(lateness, 99) * 1e3,
        "late_min_ms": min(lateness) * 1e3,
        "batches": len(lateness),
    }


async def _trickle(submit: Callable[[float], Awaitable[Any]], seconds: float, every: float) -> None:
    futures = []
    end = clock() + seconds
    while clock() < end:
        futures.append(submit(clock()))  # the job's data is its own submit time
        await asyncio.sleep(every)
    await asyncio.gather(*futures)  # the last batch too leaves by its timer, not by a shutdown


async def timer_ours(seconds: float, every: float, size: int, interval: float) -> Metrics:
    """Jobs trickle in; each batch's dispatch time minus its first job's submit time minus the interval."""
    lateness: list[float] = []

    async def process(jobs: list[Job[float]]) -> list[None]:
        lateness.append(clock() - jobs[0].data - interval)
        return [None] * len(jobs)

    batcher = AsyncMicroBatching(None, process, batch_size=size, batch_interval=interval, retry=None)
    batcher.start()
    await _trickle(lambda t: batcher.submit_job_nowait(Job(None, t)), seconds, every)
    await batcher.shutdown()
    metrics = _lateness_metrics(lateness)
    if metrics["late_min_ms"] < 0:
        raise BenchmarkError(f"a batch left {-metrics['late_min_ms']:.3f} ms before its interval")
    return metrics


async def timer_reference(seconds: float, every: float, size: int, interval: float) -> Metrics:
    """The timer workload on the reference batcher."""
    lateness: list[float] = []

    async def process(batch: list[float]) -> list[None]:
        lateness.append(clock() - batch[0] - interval)
        return [None] * len(batch)

    batcher = ReferenceBatcher(process, size, interval)
    await _trickle(batcher.submit, seconds, every)
    await batcher.close()
    return _lateness_metrics(lateness)


# -- observability: every listener plus stats() polling, against none --------------------


async def fan_in_observed(
    n: int, tasks: int, size: int, interval: float, poll_every: float | None
) -> Metrics:
    """Fan-in with a handler on every event and ``stats()`` polled every ``poll_every`` seconds (or never)."""
    counter = Counter()
    batcher = _ours(counter, size, interval)
    calls = [0]

    def listener(*args: Any) -> None:
        calls[0] += 1

    for event in microbatching.EVENTS:
        batcher.on(event, listener)
    polls: list[microbatching.Stats] = []

    async def poll(every: float) -> None:
        while True:
            polls.append(batcher.stats())
            await asyncio.sleep(every)

    poller = None if poll_every is None else asyncio.create_task(poll(poll_every))
    metrics = await _fan_in(lambda xs, lat: _ours_worker(batcher, xs, lat), n, tasks, counter, "observed")
    if poller is not None:
        poller.cancel()
    await batcher.shutdown()
    final = batcher.stats()
    # job_added + job_completed per job, batch_started + batch_completed per batch, shutdown x2.
    expected_calls = 2 * n + 2 * final.batches + 2
    if calls[0] != expected_calls or final.completed != n:
        raise BenchmarkError(f"observed: {calls[0]} listener calls, expected {expected_calls}")
    return metrics


# -- memory: a long stream under max_pending ---------------------------------------------


async def stream_ours(n: int, max_pending: int, size: int, interval: float) -> int:
    """Stream ``n`` jobs through a batcher bounded by ``max_pending``; returns how many were correct."""
    counter = Counter()
    batcher = _ours(counter, size, interval, max_pending=max_pending)
    window: deque[tuple[int, asyncio.Future[int]]] = deque()
    ok = 0
    for x in range(n):
        window.append((x, await batcher.submit_job(Job(None, x))))
        if len(window) >= max_pending:
            y, future = window.popleft()
            ok += await future == y * 2
    for y, future in window:
        ok += await future == y * 2
    await batcher.shutdown()
    return ok
