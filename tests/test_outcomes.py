"""What the processor returns or does, and what each job's handle then says. No submitter hangs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import vrun

from microbatching import (
    AsyncMicroBatching,
    BatchProcessorInterface,
    BatchResultError,
    BatchTimeoutError,
    Job,
    JobFailedError,
    MicroBatching,
)

NO_RETRY: dict[str, Any] = {"retry": None, "batch_size": 4, "batch_interval": 0.01}


async def _outcomes(processor: Any, n: int = 4, **options: Any) -> list[Any]:
    merged = {**NO_RETRY, **options}
    mb = AsyncMicroBatching(None, processor, **merged)
    futures = [mb.submit_job_nowait(Job(i, i)) for i in range(n)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    await mb.shutdown()
    return outcomes


def test_results_map_to_jobs_in_order() -> None:
    async def reverse_aware(jobs: list[Job[int]]) -> list[str]:
        return [f"job-{job.id}" for job in jobs]

    assert vrun(_outcomes(reverse_aware)) == ["job-0", "job-1", "job-2", "job-3"]


def test_tuple_results_are_accepted() -> None:
    async def as_tuple(jobs: list[Job[int]]) -> tuple[int, ...]:
        return tuple(job.data for job in jobs)

    assert vrun(_outcomes(as_tuple)) == [0, 1, 2, 3]


def test_exception_in_a_slot_fails_only_that_job() -> None:
    async def partial(jobs: list[Job[int]]) -> list[Any]:
        return [ValueError(f"bad {job.data}") if job.data == 2 else job.data for job in jobs]

    outcomes = vrun(_outcomes(partial))
    assert outcomes[:2] == [0, 1]
    assert outcomes[3] == 3
    error = outcomes[2]
    assert isinstance(error, JobFailedError)
    assert isinstance(error.cause, ValueError)
    assert error.__cause__ is error.cause
    assert error.attempts == 1
    assert "bad 2" in str(error)


def test_raising_processor_fails_every_job_of_the_batch() -> None:
    async def boom(jobs: list[Job[int]]) -> list[int]:
        raise RuntimeError("processor down")

    outcomes = vrun(_outcomes(boom))
    assert all(isinstance(o, JobFailedError) and isinstance(o.cause, RuntimeError) for o in outcomes)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([1, 2, 3], "returned 3 results for a batch of 4 jobs"),
        ([1, 2, 3, 4, 5], "returned 5 results for a batch of 4 jobs"),
        (None, "got NoneType"),
        ("abcd", "got str"),
        (42, "got int"),
        ({"a": 1}, "got dict"),
    ],
)
def test_wrong_shape_result_fails_every_job_naming_expected_and_actual(returned: Any, message: str) -> None:
    async def broken(jobs: list[Job[int]]) -> Any:
        return returned

    outcomes = vrun(_outcomes(broken))
    for outcome in outcomes:
        assert isinstance(outcome, JobFailedError)
        assert isinstance(outcome.cause, BatchResultError)
        assert message in str(outcome.cause)
        assert "expected 4" in str(outcome.cause)


def test_contract_breach_is_not_retried_even_with_a_retry_policy() -> None:
    calls = 0

    async def short(jobs: list[Job[int]]) -> list[int]:
        nonlocal calls
        calls += 1
        return []

    outcomes = vrun(_outcomes(short, retry=None))
    assert calls == 1
    from microbatching import RetryPolicy

    calls = 0
    outcomes = vrun(_outcomes(short, retry=RetryPolicy(max_attempts=5, base_delay=0)))
    assert calls == 1
    assert all(isinstance(o, JobFailedError) and o.attempts == 1 for o in outcomes)


def test_async_processor_past_batch_timeout_is_cancelled_and_jobs_fail() -> None:
    cancelled = []

    async def hangs(jobs: list[Job[int]]) -> list[int]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return []

    outcomes = vrun(_outcomes(hangs, batch_timeout=2.0))
    assert cancelled == [True]
    for outcome in outcomes:
        assert isinstance(outcome, JobFailedError)
        assert isinstance(outcome.cause, BatchTimeoutError)
        assert "batch_timeout=2.0s" in str(outcome.cause)


def test_sync_processor_past_batch_timeout_fails_jobs_and_batcher_moves_on() -> None:
    release = threading.Event()

    def process(jobs: list[Job[int]]) -> list[int]:
        if jobs[0].data == 0:
            release.wait(10)  # hangs until the test lets it go
        return [job.data for job in jobs]

    with MicroBatching(None, process, batch_size=1, batch_interval=0.01, batch_timeout=0.2, retry=None) as mb:
        stuck = mb.submit_job(Job(0, 0))
        with pytest.raises(JobFailedError) as info:
            stuck.result(timeout=5)
        assert isinstance(info.value.cause, BatchTimeoutError)
        assert mb.submit_job(Job(1, 1)).result(timeout=5) == 1  # a new batch gets a thread
        release.set()


def test_processor_raising_cancelled_error_fails_jobs_instead_of_hanging() -> None:
    async def self_cancel(jobs: list[Job[int]]) -> list[int]:
        raise asyncio.CancelledError

    outcomes = vrun(_outcomes(self_cancel))
    assert all(
        isinstance(o, JobFailedError) and isinstance(o.cause, asyncio.CancelledError) for o in outcomes
    )


def test_sync_processor_that_returns_a_coroutine_is_awaited() -> None:
    async def really_async(jobs: list[Job[int]]) -> list[int]:
        return [job.data + 1 for job in jobs]

    def looks_sync(jobs: list[Job[int]]) -> Any:
        return really_async(jobs)

    with MicroBatching(None, looks_sync, batch_size=2, batch_interval=0.01) as mb:
        assert [mb.submit_job(Job(i, i)).result(5) for i in range(2)] == [1, 2]


def test_processor_object_with_process_batch_sync_and_async() -> None:
    class SyncProcessor(BatchProcessorInterface):
        def process_batch(self, jobs: list[Job[Any]]) -> list[Any]:
            return [job.data * 3 for job in jobs]

    class AsyncProcessor:  # duck-typed, no base class
        async def process_batch(self, jobs: list[Job[Any]]) -> list[Any]:
            return [job.data * 5 for job in jobs]

    with MicroBatching(None, SyncProcessor(), batch_size=2) as mb:
        assert mb.submit_job(Job(1, 2)).result(5) == 6
    assert vrun(_outcomes(AsyncProcessor(), n=2)) == [0, 5]


def test_processor_receives_a_copy_it_may_mutate_safely() -> None:
    async def mutating(jobs: list[Job[int]]) -> list[int]:
        results = [job.data for job in jobs]
        jobs.clear()
        return results

    assert vrun(_outcomes(mutating)) == [0, 1, 2, 3]


def test_cancelled_handle_drops_the_job_before_its_batch_runs() -> None:
    seen: list[int] = []

    async def main() -> None:
        async def record(jobs: list[Job[int]]) -> list[int]:
            seen.extend(job.data for job in jobs)
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, record, batch_size=10, batch_interval=0.05)
        keep = mb.submit_job_nowait(Job(1, 1))
        drop = mb.submit_job_nowait(Job(2, 2))
        drop.cancel()
        assert await keep == 1
        await mb.shutdown()
        assert mb.stats().cancelled == 1
        assert mb.stats().pending == 0

    vrun(main())
    assert seen == [1]


def test_handle_cancelled_while_running_does_not_break_the_batch() -> None:
    async def main() -> None:
        async def slow(jobs: list[Job[int]]) -> list[int]:
            await asyncio.sleep(1)
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, slow, batch_size=2, batch_interval=0.01)
        first = mb.submit_job_nowait(Job(1, 1))
        second = mb.submit_job_nowait(Job(2, 2))
        await asyncio.sleep(0.5)
        first.cancel()
        assert await second == 2
        await mb.shutdown()
        assert mb.stats().pending == 0

    vrun(main())


def test_sync_processor_keyboard_interrupt_fails_jobs_not_hangs() -> None:
    def interrupted(jobs: list[Job[int]]) -> list[int]:
        raise KeyboardInterrupt

    mb = MicroBatching(None, interrupted, batch_size=1, batch_interval=0.01, retry=None)
    handle = mb.submit_job(Job(1, 1))
    with pytest.raises(JobFailedError):
        handle.result(timeout=5)
    start = time.monotonic()
    mb.shutdown(timeout=5)
    assert time.monotonic() - start < 5


def test_submit_job_nowait_returns_an_exact_asyncio_future() -> None:
    async def main() -> None:
        async def echo(jobs: list[Job[int]]) -> list[int]:
            return [job.data for job in jobs]

        async with AsyncMicroBatching(None, echo, batch_size=1) as mb:
            future = mb.submit_job_nowait(Job(1, 1))
            assert type(future) is asyncio.Future
            assert await future == 1

    vrun(main())


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_max_concurrent_batches_caps_batches_running_at_once(cap: int) -> None:
    running = peak = 0

    async def slow(jobs: list[Job[int]]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(1)
        running -= 1
        return [job.data for job in jobs]

    async def main() -> None:
        mb = AsyncMicroBatching(None, slow, batch_size=2, batch_interval=0.01, max_concurrent_batches=cap)
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(20)]
        assert await asyncio.gather(*futures) == list(range(20))
        await mb.shutdown()

    vrun(main())
    assert peak == cap
