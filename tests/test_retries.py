"""Retries: backoff with jitter, healthy jobs not held back, final error with cause and attempts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import vrun

from microbatching import DEFAULT_RETRY, AsyncMicroBatching, Job, JobFailedError, RetryPolicy


def test_delay_grows_exponentially_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.1, multiplier=3, max_delay=2.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.1, 0.3, 0.9, 2.0, 2.0])


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10_000, base_delay=1, multiplier=10, max_delay=5, jitter=0)
    assert policy.delay(5000) == 5


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999])
def test_jitter_cuts_the_delay_by_at_most_its_fraction(draw: float) -> None:
    policy = RetryPolicy(base_delay=1.0, jitter=0.5, _random=lambda: draw)
    assert policy.delay(1) == pytest.approx(1.0 - 0.5 * draw)
    assert 0.5 <= policy.delay(1) <= 1.0


def test_retry_on_tuple_and_predicate() -> None:
    only_io = RetryPolicy(retry_on=(OSError,))
    assert only_io.should_retry(ConnectionError(), 1)
    assert not only_io.should_retry(ValueError(), 1)
    predicate = RetryPolicy(retry_on=lambda exc: "again" in str(exc))
    assert predicate.should_retry(RuntimeError("try again"), 1)
    assert not predicate.should_retry(RuntimeError("fatal"), 1)
    assert not predicate.should_retry(RuntimeError("again"), 3)  # attempts exhausted


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts must be >= 1"),
        ({"max_attempts": 2.5}, TypeError, "max_attempts must be an int"),
        ({"base_delay": -1}, ValueError, "base_delay must be finite and >= 0"),
        ({"max_delay": "1"}, TypeError, "max_delay must be a number"),
        ({"multiplier": 0.5}, ValueError, "multiplier must be finite and >= 1"),
        ({"jitter": 1.5}, ValueError, "jitter must be between 0 and 1"),
        ({"retry_on": (ValueError, 3)}, TypeError, "retry_on must be"),
    ],
)
def test_bad_retry_policy_is_refused_with_a_clear_message(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        RetryPolicy(**kwargs)


def test_default_retry_policy_is_documented_values() -> None:
    assert (DEFAULT_RETRY.max_attempts, DEFAULT_RETRY.base_delay, DEFAULT_RETRY.max_delay) == (3, 0.1, 10.0)


class FailsFirst:
    """Fails the jobs listed in ``flaky`` on their first ``failures`` attempts."""

    def __init__(self, flaky: set[int], failures: int) -> None:
        self.flaky, self.failures = flaky, failures
        self.batches: list[tuple[float, list[tuple[int, int]]]] = []

    async def process_batch(self, jobs: list[Job[int]]) -> list[Any]:
        self.batches.append((asyncio.get_running_loop().time(), [(j.data, j.attempts) for j in jobs]))
        return [
            OSError(f"flaky {j.data}")
            if j.data in self.flaky and j.attempts <= self.failures
            else j.data * 10
            for j in jobs
        ]


def test_retried_job_joins_a_later_batch_and_healthy_jobs_are_not_held_back() -> None:
    processor = FailsFirst(flaky={1}, failures=1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        policy = RetryPolicy(max_attempts=3, base_delay=1.0, jitter=0)
        mb = AsyncMicroBatching(None, processor, batch_size=3, batch_interval=0.1, retry=policy)
        retrying: list[tuple[int, float]] = []
        mb.on("job_retrying", lambda job, error, delay: retrying.append((job.data, delay)))
        t0 = loop.time()
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3)]
        assert await futures[0] == 0
        assert await futures[2] == 20
        assert loop.time() == t0  # completed with the first batch, not after the retry
        assert await futures[1] == 10
        assert retrying == [(1, 1.0)]
        await mb.shutdown()

    vrun(main())
    (t_first, first), (t_second, second) = processor.batches
    assert first == [(0, 1), (1, 1), (2, 1)]
    assert second == [(1, 2)]  # attempts counts attempts started
    assert t_second - t_first == pytest.approx(1.0 + 0.1)  # delay, then a fresh interval


def test_job_fails_for_good_after_max_attempts_with_cause_and_count() -> None:
    processor = FailsFirst(flaky={7}, failures=99)

    async def main() -> None:
        policy = RetryPolicy(max_attempts=4, base_delay=0.01, jitter=0)
        mb = AsyncMicroBatching(None, processor, batch_size=10, batch_interval=0.01, retry=policy)
        failed: list[Any] = []
        mb.on("job_failed", lambda job, error: failed.append((job.id, error)))
        future = mb.submit_job_nowait(Job("seven", 7))
        with pytest.raises(JobFailedError) as info:
            await future
        assert info.value.attempts == 4
        assert isinstance(info.value.cause, OSError)
        assert "failed after 4 attempts" in str(info.value)
        assert failed == [("seven", info.value)]
        stats = mb.stats()
        assert (stats.retried, stats.failed, stats.pending) == (3, 1, 0)
        await mb.shutdown()

    vrun(main())
    assert [attempts for _, batch in processor.batches for _, attempts in batch] == [1, 2, 3, 4]


def test_retry_none_fails_at_the_first_error() -> None:
    processor = FailsFirst(flaky={1}, failures=1)

    async def main() -> None:
        mb = AsyncMicroBatching(None, processor, batch_size=1, batch_interval=0.01, retry=None)
        with pytest.raises(JobFailedError) as info:
            await mb.submit_job_nowait(Job(1, 1))
        assert info.value.attempts == 1
        await mb.shutdown()

    vrun(main())


def test_errors_outside_retry_on_fail_at_once() -> None:
    async def typed(jobs: list[Job[int]]) -> list[Any]:
        return [TypeError("not retryable") for _ in jobs]

    async def main() -> None:
        mb = AsyncMicroBatching(None, typed, batch_size=1, retry=RetryPolicy(retry_on=(OSError,)))
        with pytest.raises(JobFailedError) as info:
            await mb.submit_job_nowait(Job(1, 1))
        assert info.value.attempts == 1
        await mb.shutdown()

    vrun(main())


def test_retry_waiting_jobs_count_as_pending() -> None:
    processor = FailsFirst(flaky={1}, failures=1)

    async def main() -> None:
        policy = RetryPolicy(max_attempts=2, base_delay=5.0, jitter=0)
        mb = AsyncMicroBatching(
            None, processor, batch_size=1, batch_interval=0.01, retry=policy, max_pending=1
        )
        future = mb.submit_job_nowait(Job(1, 1))
        await asyncio.sleep(1)
        stats = mb.stats()
        assert (stats.pending, stats.retrying, stats.buffered, stats.in_flight) == (1, 1, 0, 0)
        from microbatching import QueueFullError

        with pytest.raises(QueueFullError):
            mb.submit_job_nowait(Job(2, 2))
        assert await future == 10
        await mb.shutdown()

    vrun(main())
