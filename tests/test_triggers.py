"""When batches leave: size, time (from the oldest job, monotonic), weight, and never too big."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import double, vrun

from microbatching import AsyncMicroBatching, Batch, Job, MicroBatching, RetryPolicy


def _record(mb: AsyncMicroBatching | MicroBatching) -> list[Batch]:
    started: list[Batch] = []
    mb.on("batch_started", started.append)
    return started


def test_size_trigger_dispatches_full_batch_without_waiting_for_interval() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        mb = AsyncMicroBatching(None, double, batch_size=3, batch_interval=10.0)
        batches = _record(mb)
        t0 = loop.time()
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3)]
        assert await asyncio.gather(*futures) == [0, 2, 4]
        assert [(b.trigger, len(b)) for b in batches] == [("size", 3)]
        assert batches[0].started_at == t0
        await mb.shutdown()

    vrun(main())


def test_time_trigger_fires_exactly_interval_after_first_job() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        mb = AsyncMicroBatching(None, double, batch_size=100, batch_interval=0.25)
        batches = _record(mb)
        first = mb.submit_job_nowait(Job(1, 1))
        t_first = loop.time()
        await asyncio.sleep(0.1)
        second = mb.submit_job_nowait(Job(2, 2))  # a later job does not restart the clock
        assert await asyncio.gather(first, second) == [2, 4]
        assert [(b.trigger, len(b)) for b in batches] == [("time", 2)]
        assert batches[0].started_at == t_first + 0.25
        await mb.shutdown()

    vrun(main())


def test_time_trigger_never_leaves_early_on_the_real_clock() -> None:
    with MicroBatching(None, lambda jobs: [j.data for j in jobs], batch_size=1000, batch_interval=0.03) as mb:
        batches = _record(mb)
        for i in range(5):
            mb.submit_job(Job(i, i)).result(timeout=5)
    assert len(batches) == 5
    for batch in batches:
        assert batch.started_at is not None
        assert batch.started_at - batch.jobs[0].submitted_at >= 0.03  # type: ignore[operator]


def test_interval_zero_batches_what_arrived_in_the_same_loop_tick() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, double, batch_size=100, batch_interval=0)
        batches = _record(mb)
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(5)]
        await asyncio.gather(*futures)
        assert [len(b) for b in batches] == [5]
        await mb.shutdown()

    vrun(main())


def test_weight_trigger_closes_batch_before_it_would_exceed_max_weight() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(
            None, double, batch_size=100, batch_interval=1.0, max_batch_weight=10, weight=lambda job: job.data
        )
        batches = _record(mb)
        futures = [mb.submit_job_nowait(Job(i, w)) for i, w in enumerate([4, 4, 4, 6, 3])]
        await asyncio.gather(*futures)
        sizes = [[job.data for job in b.jobs] for b in batches]
        assert sizes == [[4, 4], [4, 6], [3]]
        assert [b.trigger for b in batches] == ["weight", "weight", "time"]
        await mb.shutdown()

    vrun(main())


def test_job_heavier_than_max_weight_goes_alone() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(
            None, double, batch_size=100, batch_interval=1.0, max_batch_weight=10, weight=lambda job: job.data
        )
        batches = _record(mb)
        futures = [mb.submit_job_nowait(Job(i, w)) for i, w in enumerate([2, 50, 2])]
        assert await asyncio.gather(*futures) == [4, 100, 4]
        assert [[job.data for job in b.jobs] for b in batches] == [[2], [50], [2]]
        await mb.shutdown()

    vrun(main())


def test_weight_function_that_raises_fails_only_that_job() -> None:
    def weight(job: Job[Any]) -> float:
        if job.data == "bad":
            raise ValueError("cannot weigh")
        return 1.0

    async def main() -> None:
        async def echo(jobs: list[Job[Any]]) -> list[Any]:
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(
            None, echo, batch_size=10, batch_interval=0.1, max_batch_weight=5, weight=weight
        )
        good = mb.submit_job_nowait(Job(1, "good"))
        bad = mb.submit_job_nowait(Job(2, "bad"))
        assert await good == "good"
        with pytest.raises(Exception, match="cannot weigh"):
            await bad
        await mb.shutdown()

    vrun(main())


def test_retried_jobs_never_push_a_batch_past_batch_size() -> None:
    async def main() -> list[int]:
        failed_once: set[int] = set()

        async def flaky(jobs: list[Job[int]]) -> list[Any]:
            results: list[Any] = []
            for job in jobs:
                if job.data % 2 == 0 and job.data not in failed_once:
                    failed_once.add(job.data)
                    results.append(RuntimeError("flaky"))
                else:
                    results.append(job.data)
            return results

        retry = RetryPolicy(max_attempts=3, base_delay=0.0, jitter=0.0)
        mb = AsyncMicroBatching(None, flaky, batch_size=10, batch_interval=0.01, retry=retry)
        batches = _record(mb)
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(1000)]
        assert await asyncio.gather(*futures) == list(range(1000))
        await mb.shutdown()
        return [len(b) for b in batches]

    sizes = vrun(main())
    assert max(sizes) == 10
    assert sum(sizes) == 1500  # 1000 first attempts + 500 retries


def test_busy_slot_lets_the_due_batch_keep_growing_up_to_batch_size() -> None:
    """Under a concurrency cap the waiting batch fills up instead of leaving small (Ray #43288)."""

    async def main() -> None:
        async def slow(jobs: list[Job[int]]) -> list[int]:
            await asyncio.sleep(1.0)
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, slow, batch_size=50, batch_interval=0.01)
        batches = _record(mb)
        futures = [mb.submit_job_nowait(Job(0, 0))]
        for i in range(1, 40):  # arrive while the first batch runs for a second
            await asyncio.sleep(0.02)
            futures.append(mb.submit_job_nowait(Job(i, i)))
        await asyncio.gather(*futures)
        assert [len(b) for b in batches][:2] == [1, 39]
        await mb.shutdown()

    vrun(main())
