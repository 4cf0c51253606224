"""stats(): a frozen snapshot of counters, gauges and windowed distributions, on both batchers."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from conftest import double, vrun

from microbatching import AsyncMicroBatching, Job, MicroBatching, RetryPolicy, Stats
from microbatching._stats import DEFAULT_WINDOW, Histogram, Recorder, Summary, summarize, summarize_window


def test_stats_is_frozen_and_starts_empty() -> None:
    mb = MicroBatching(None, lambda jobs: [j.data for j in jobs])
    stats = mb.stats()
    assert isinstance(stats, Stats)
    assert stats.batch_size == Summary() and stats.queue_wait.count == 0
    assert stats.window_batches == 0 and stats.throughput == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.completed = 3  # type: ignore[misc]
    mb.shutdown()


def test_queue_wait_and_processing_time_on_a_virtual_clock() -> None:
    async def slow(jobs: list[Job[int]]) -> list[int]:
        await asyncio.sleep(0.5)
        return [j.data for j in jobs]

    async def main() -> Stats:
        mb = AsyncMicroBatching(None, slow, batch_size=10, batch_interval=0.2)
        first = mb.submit_job_nowait(Job(1, 1))
        await asyncio.sleep(0.1)
        second = mb.submit_job_nowait(Job(2, 2))  # joins at 0.1 s: waits 0.1 s
        await asyncio.gather(first, second)
        stats = mb.stats()
        await mb.shutdown()
        return stats

    stats = vrun(main())
    assert stats.completed == 2 and stats.batches == 1
    assert stats.batches_by_trigger["time"] == 1
    assert stats.batch_size.count == 1 and stats.batch_size.p50 == 2
    assert stats.queue_wait.count == 2
    assert stats.queue_wait.max == pytest.approx(0.2)
    assert stats.queue_wait.min == pytest.approx(0.1)
    assert stats.processing_time.p99 == pytest.approx(0.5)
    assert stats.throughput == pytest.approx(2 / 0.5)
    assert stats.window_batches == 1


def test_batch_size_distribution_over_mixed_batches() -> None:
    async def main() -> Stats:
        mb = AsyncMicroBatching(None, double, batch_size=4, batch_interval=1.0)
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(9)]  # 4 + 4 by size, 1 by time
        await asyncio.gather(*futures)
        await mb.shutdown()
        return mb.stats()

    stats = vrun(main())
    expected = {"size": 2, "time": 1, "weight": 0, "flush": 0, "bulk": 0, "shutdown": 0}
    assert stats.batches_by_trigger == expected
    assert stats.batch_size.count == 3
    assert (stats.batch_size.min, stats.batch_size.max, stats.batch_size.p50) == (1, 4, 4)
    assert stats.batch_size.mean == pytest.approx(3.0)
    assert stats.queue_wait.count == 9


def test_failures_retries_and_processor_errors_are_counted() -> None:
    calls = {"n": 0}

    def flaky(jobs: list[Job[int]]) -> list[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return [ValueError("bad") if j.data == 0 else j.data for j in jobs]

    with MicroBatching(
        None, flaky, batch_size=2, batch_interval=0.01, retry=RetryPolicy(max_attempts=2, base_delay=0.01)
    ) as mb:
        handles = [mb.submit_job(Job(i, i)) for i in range(2)]
        assert handles[1].result(timeout=5) == 1
        with pytest.raises(Exception, match="bad"):
            handles[0].result(timeout=5)
        stats = mb.stats()
    assert stats.processor_errors == 1
    assert stats.retried == 2
    assert stats.completed == 1 and stats.failed == 1
    assert stats.pending == 0
    assert stats.batches == 2 and stats.window_batches == 2


def test_window_is_bounded() -> None:
    recorder = Recorder(window=3)

    class FakeBatch:
        id, trigger, started_at = 1, "size", 10.0
        futures = bulk = None

    job = Job(1, 1)
    job._ready_at = 9.0
    for _ in range(5):
        recorder.record(FakeBatch(), [job], [1], 11.0, None)  # type: ignore[arg-type]
    assert len(recorder.summaries()["window"]) == 3
    assert DEFAULT_WINDOW >= 1000


def test_queue_wait_samples_large_batches_by_their_share() -> None:
    recorder = Recorder()

    class FakeBatch:
        id, trigger, started_at = 1, "size", 100.0
        futures = bulk = None

    jobs = [Job(i, i) for i in range(101)]
    for i, job in enumerate(jobs):
        job._ready_at = 100.0 - (100 - i) * 0.01  # the oldest waited 1 s, the newest 0 s
    recorder.record(FakeBatch(), jobs, [0] * 101, 100.5, None)  # type: ignore[arg-type]
    wait = summarize_window(recorder.summaries()["window"])["queue_wait"]
    assert wait.count == 101
    assert wait.max == pytest.approx(1.0)
    assert wait.min == pytest.approx(0.0)
    assert wait.p50 == pytest.approx(0.5)
    assert wait.mean == pytest.approx(0.5)


def test_summarize_weighted_percentiles() -> None:
    values = [(float(v), 1.0) for v in range(1, 101)]
    summary = summarize(values)
    assert (summary.p50, summary.p90, summary.p99) == (50.0, 90.0, 99.0)
    assert summary.count == 100 and summary.min == 1.0 and summary.max == 100.0
    assert summarize([]) == Summary()
    heavy = summarize([(1.0, 1.0), (10.0, 99.0)])
    assert heavy.p50 == 10.0 and heavy.min == 1.0


def test_histogram_is_cumulative() -> None:
    h = Histogram((1.0, 5.0))
    h.add(0.5)
    h.add(3.0, times=2)
    h.add(9.0)
    assert h.cumulative() == [(1.0, 1), (5.0, 3), (float("inf"), 4)]
    assert h.count == 4 and h.sum == pytest.approx(15.5)


def test_histograms_are_kept_only_once_enabled() -> None:
    async def main() -> AsyncMicroBatching:
        mb = AsyncMicroBatching(None, double, batch_size=2, batch_interval=0.1)
        assert mb._engine.recorder.histograms is None
        histograms = mb._engine.recorder.enable_histograms()
        await asyncio.gather(*(mb.submit_job_nowait(Job(i, i)) for i in range(5)))
        await mb.shutdown()
        assert histograms.batch_size.count == 3
        assert histograms.queue_wait.count == 5
        assert histograms.processing_time.count == 3
        return mb

    vrun(main())


def test_sync_stats_from_another_thread_is_consistent() -> None:
    with MicroBatching(None, lambda jobs: [j.data for j in jobs], batch_size=50, batch_interval=0.01) as mb:
        handles = [mb.submit_job(Job(i, i)) for i in range(500)]
        for h in handles:
            h.result(timeout=10)
        stats = mb.stats()
    assert stats.completed == 500
    assert stats.batch_size.count == stats.batches
    assert stats.queue_wait.count == 500
    assert stats.processing_time.max >= stats.processing_time.p50 >= 0
    assert stats.throughput > 0


def test_distributions_are_computed_on_first_read_and_exported_by_as_dict() -> None:
    async def main() -> Stats:
        mb = AsyncMicroBatching(None, double, batch_size=2)
        await asyncio.gather(*(mb.submit_job_nowait(Job(i, i)) for i in range(4)))
        await mb.shutdown()
        return mb.stats()

    stats = vrun(main())
    assert "_summaries" not in stats.__dict__  # nothing computed by stats() itself
    assert stats.batch_size.p50 == 2
    assert "_summaries" in stats.__dict__
    data = stats.as_dict()
    assert data["completed"] == 4 and data["batch_size"]["count"] == 2 and data["window_batches"] == 2
    assert "window" not in data
    assert "queue_wait=Summary(count=4" in repr(stats)
