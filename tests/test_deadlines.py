"""Per-job deadlines (either policy) and shedding with a typed error (adaptive), on the virtual clock."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import vrun

from microbatching import (
    AsyncMicroBatching,
    DeadlineExceededError,
    Job,
    MicroBatching,
    MicroBatchingError,
    OverloadedError,
    RetryPolicy,
)
from microbatching.queues import SQLiteQueue


def affine(size: int) -> float:
    return 0.005 + 0.0001 * size


class Recorder:
    """An async processor taking ``seconds(n)`` per batch that remembers what it ran, and when."""

    def __init__(self, seconds: Any = affine) -> None:
        self.seconds = seconds
        self.batches: list[list[Any]] = []
        self.started: dict[Any, float] = {}

    async def __call__(self, items: list[Any]) -> list[Any]:
        now = asyncio.get_running_loop().time()
        self.batches.append(list(items))
        for item in items:
            self.started[item] = now
        await asyncio.sleep(self.seconds(len(items)))
        return items

    @property
    def ran(self) -> list[Any]:
        return [item for batch in self.batches for item in batch]


async def warm_up(mb: AsyncMicroBatching, batches: int = 40) -> None:
    """Some batches of one job each, so the adaptive policy has a model of the processor."""
    for index in range(batches):
        await mb.submit_nowait(("warm", index))


# -- the deadline= option --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError),
     ("1", TypeError), (True, TypeError), ([1], TypeError)],
)  # fmt: skip
def test_a_bad_deadline_is_refused_naming_it(value: object, error: type[Exception]) -> None:
    async def main() -> None:
        async with AsyncMicroBatching(None, Recorder(), takes="items") as mb:
            with pytest.raises(error, match="deadline must be"):
                mb.submit_nowait(1, deadline=value)  # type: ignore[arg-type]
            with pytest.raises(error, match="deadline must be"):
                mb.submit_job_nowait(Job(data=1), deadline=value)  # type: ignore[arg-type]
            assert mb.stats().submitted == 0

    vrun(main())
    with MicroBatching(None, lambda jobs: [job.data for job in jobs]) as mb:
        with pytest.raises(error, match="deadline must be"):
            mb.submit(1, deadline=value)  # type: ignore[arg-type]
        with pytest.raises(error, match="deadline must be"):
            mb.submit_job(Job(data=1), deadline=value)  # type: ignore[arg-type]


def test_the_deadline_counts_from_the_submit_on_the_monotonic_clock() -> None:
    async def main() -> tuple[Job[Any], float]:
        async with AsyncMicroBatching(None, Recorder(), takes="items") as mb:
            job: Job[Any] = Job(data=1)
            future = mb.submit_job_nowait(job, deadline=0.25)
            assert job.submitted_at is not None
            await future
            return job, job.submitted_at

    job, submitted = vrun(main())
    assert job.deadline == pytest.approx(submitted + 0.25)
    assert Job(data=2).deadline is None


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
def test_a_job_whose_deadline_passes_while_it_waits_fails_typed_and_never_runs(policy: str) -> None:
    processor = Recorder(lambda n: 0.2)
    options: dict[str, Any] = {"latency_target": 0.5} if policy == "adaptive" else {"batch_interval": 0.0}

    async def main() -> tuple[list[Any], Any]:
        async with AsyncMicroBatching(None, processor, takes="items", batch_size=1, **options) as mb:
            first = mb.submit_nowait("first")  # holds the one slot for 0.2 s
            late = mb.submit_nowait("late", deadline=0.05)
            patient = mb.submit_nowait("patient", deadline=5.0)
            outcomes = await asyncio.gather(first, late, patient, return_exceptions=True)
            return outcomes, mb.stats()

    outcomes, stats = vrun(main())
    assert outcomes[0] == "first" and outcomes[2] == "patient"
    assert isinstance(outcomes[1], DeadlineExceededError)
    assert isinstance(outcomes[1], MicroBatchingError) and isinstance(outcomes[1], TimeoutError)
    assert "was not run" in str(outcomes[1])
    assert "late" not in processor.ran
    assert stats.deadline_exceeded == 1 and stats.failed == 1 and stats.completed == 2


def test_the_sync_batcher_fails_a_late_job_the_same_way() -> None:
    ran: list[Any] = []

    def slow(jobs: list[Job[Any]]) -> list[Any]:
        ran.extend(job.data for job in jobs)
        if jobs[0].data == "first":
            import time

            time.sleep(0.3)
        return [job.data for job in jobs]

    with MicroBatching(None, slow, batch_size=1, batch_interval=0.0) as mb:
        first = mb.submit_job(Job(data="first"))
        late = mb.submit_job(Job(data="late"), deadline=0.05)
        assert first.result(5) == "first"
        assert isinstance(late.exception(5), DeadlineExceededError)
        assert mb.stats().deadline_exceeded == 1
    assert "late" not in ran


def test_a_job_already_running_at_its_deadline_is_not_interrupted() -> None:
    async def main() -> Any:
        async with AsyncMicroBatching(None, Recorder(lambda n: 0.3), takes="items", batch_interval=0.0) as mb:
            return await mb.submit_nowait("slow", deadline=0.1)

    assert vrun(main()) == "slow"


def test_a_retry_that_would_start_after_the_deadline_fails_typed_with_the_cause() -> None:
    calls: list[int] = []

    async def flaky(items: list[Any]) -> list[Any]:
        calls.append(len(items))
        return [ConnectionError("down") if len(calls) == 1 else item for item in items]

    retry = RetryPolicy(max_attempts=3, base_delay=0.5, jitter=0.0)

    async def main(deadline: float) -> Any:
        async with AsyncMicroBatching(None, flaky, takes="items", retry=retry, batch_interval=0.0) as mb:
            outcome = await asyncio.gather(mb.submit_nowait("x", deadline=deadline), return_exceptions=True)
            return outcome[0], mb.stats()

    error, stats = vrun(main(0.2))
    assert isinstance(error, DeadlineExceededError)
    assert isinstance(error.__cause__, ConnectionError)
    assert "retry" in str(error)
    assert calls == [1] and stats.retried == 0 and stats.deadline_exceeded == 1
    calls.clear()
    result, stats = vrun(main(2.0))  # time for the retry: it runs, and succeeds
    assert result == "x" and calls == [1, 1] and stats.retried == 1


def test_a_resubmitted_job_does_not_keep_its_earlier_deadline() -> None:
    async def main() -> Job[Any]:
        async with AsyncMicroBatching(None, Recorder(), takes="items") as mb:
            job: Job[Any] = Job(data=1)
            await mb.submit_job_nowait(job, deadline=0.5)
            await mb.submit_job_nowait(job)
            return job

    assert vrun(main()).deadline is None


def test_a_durable_queue_refuses_a_deadline_it_cannot_carry(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "jobs.db")
    with MicroBatching(queue, lambda jobs: [job.data for job in jobs]) as mb:
        with pytest.raises(TypeError, match=r"deadline= cannot be used with SQLiteQueue"):
            mb.submit(1, deadline=1.0)
        assert mb.submit(2).result(10) == 2


# -- earliest deadline first (the adaptive policy) ------------------------------------------------


def test_the_adaptive_policy_runs_waiting_jobs_earliest_deadline_first() -> None:
    processor = Recorder(lambda n: 0.05)

    async def main() -> None:
        async with AsyncMicroBatching(None, processor, takes="items", batch_size=2, latency_target=1.0) as mb:
            busy = mb.submit_nowait("busy")
            await asyncio.sleep(0.001)  # its batch runs: the others wait for the slot
            deadlines = {"d": 0.9, "a": 0.3, "none": None, "c": 0.7, "b": 0.5}
            futures = [
                mb.submit_nowait(name) if value is None else mb.submit_nowait(name, deadline=value)
                for name, value in deadlines.items()
            ]
            await asyncio.gather(busy, *futures)

    vrun(main())
    assert processor.batches[0] == ["busy"]
    assert processor.ran[1:] == ["a", "b", "c", "d", "none"]  # jobs without a deadline come last
    assert all(len(batch) <= 2 for batch in processor.batches)


def test_under_the_fixed_policy_jobs_with_deadlines_keep_their_order() -> None:
    processor = Recorder(lambda n: 0.05)

    async def main() -> None:
        async with AsyncMicroBatching(None, processor, takes="items", batch_size=2, batch_interval=0.0) as mb:
            busy = mb.submit_nowait("busy")
            await asyncio.sleep(0.001)
            futures = [mb.submit_nowait(name, deadline=value) for name, value in [("b", 0.9), ("a", 0.3)]]
            await asyncio.gather(busy, *futures)

    vrun(main())
    assert processor.ran == ["busy", "b", "a"]


def test_a_job_predicted_to_finish_late_fails_instead_of_running() -> None:
    processor = Recorder(lambda n: 0.1)

    async def main() -> Any:
        async with AsyncMicroBatching(None, processor, takes="items", latency_target=1.0) as mb:
            await warm_up(mb, 10)  # it learns that a batch takes 0.1 s
            busy = mb.submit_nowait("busy")
            await asyncio.sleep(0.05)
            # The slot frees at 0.1 s; its batch would end at 0.2 s: past a 0.15 s deadline.
            doomed = mb.submit_nowait("doomed", deadline=0.1)
            fine = mb.submit_nowait("fine", deadline=0.5)
            return await asyncio.gather(busy, doomed, fine, return_exceptions=True)

    busy, doomed, fine = vrun(main())
    assert busy == "busy" and fine == "fine"
    assert isinstance(doomed, DeadlineExceededError) and "would finish" in str(doomed)
    assert "doomed" not in processor.ran


def test_a_batch_waiting_for_company_leaves_early_for_a_deadline() -> None:
    processor = Recorder()

    async def main() -> tuple[float, float, Any]:
        loop = asyncio.get_running_loop()
        async with AsyncMicroBatching(
            None, processor, takes="items", latency_target=0.1, objective="cost"
        ) as mb:
            await warm_up(mb)
            await asyncio.sleep(0.2)
            wait = mb.stats().policy.wait  # type: ignore[union-attr]
            submitted = loop.time()
            await mb.submit_nowait("urgent", deadline=0.02)
            return wait, loop.time() - submitted, mb.stats()

    wait, latency, stats = vrun(main())
    assert wait > 0.04  # without the deadline it would have waited this long for company
    assert latency <= 0.02
    assert stats.batches_by_trigger["deadline"] == 1


# -- shedding ----------------------------------------------------------------------------------------


def test_shed_needs_the_adaptive_policy_and_a_bool() -> None:
    with pytest.raises(TypeError, match="shed=True needs the adaptive policy"):
        AsyncMicroBatching(None, Recorder(), shed=True)
    with pytest.raises(TypeError, match="shed must be True or False"):
        AsyncMicroBatching(None, Recorder(), latency_target=0.1, shed=1)


def test_at_overload_a_submit_predicted_to_miss_the_target_is_shed_typed() -> None:
    async def main() -> tuple[list[Any], Any]:
        async with AsyncMicroBatching(
            None, Recorder(affine), takes="items", latency_target=0.05, batch_size=32, shed=True
        ) as mb:
            await warm_up(mb)
            futures: list[Any] = []
            errors: list[OverloadedError] = []
            for item in range(3000):  # all at once: far more than 50 ms of work
                try:
                    futures.append(mb.submit_nowait(item))
                except OverloadedError as exc:
                    errors.append(exc)
            await asyncio.gather(*futures)
            return errors, mb.stats()

    errors, stats = vrun(main())
    assert errors, "nothing was shed"
    assert "over latency_target=50 ms" in str(errors[0]) and "would take about" in str(errors[0])
    assert stats.policy is not None and stats.policy.shed == len(errors)
    assert stats.submitted == 40 + 3000 - len(errors)  # a shed job was never accepted
    assert stats.completed == stats.submitted


def test_under_capacity_nothing_is_shed() -> None:
    async def main() -> Any:
        async with AsyncMicroBatching(
            None, Recorder(affine), takes="items", latency_target=0.05, shed=True
        ) as mb:
            for item in range(400):  # 400 jobs a second: a small share of what it can do
                await asyncio.sleep(0.0025)
                mb.submit_nowait(item)
            await asyncio.sleep(0.1)
            return mb.stats()

    stats = vrun(main())
    assert stats.policy is not None and stats.policy.shed == 0 and stats.completed == 400
    assert stats.policy.predicted_latency is not None and stats.policy.predicted_latency < 0.05


def test_the_sync_batcher_sheds_too() -> None:
    import time

    def slow(jobs: list[Job[Any]]) -> list[Any]:
        time.sleep(0.02 + 0.001 * len(jobs))
        return [job.data for job in jobs]

    shed = 0
    with MicroBatching(None, slow, latency_target=0.05, batch_size=8, shed=True) as mb:
        for item in range(20):
            mb.submit(item).result(5)  # one at a time: it learns the processor
        handles = []
        for item in range(500):
            try:
                handles.append(mb.submit(item))
            except OverloadedError:
                shed += 1
        for handle in handles:
            handle.result(30)
        stats = mb.stats()
    assert shed > 0 and stats.policy is not None and stats.policy.shed == shed


def test_a_submit_refused_at_max_pending_leaves_the_job_without_a_deadline() -> None:
    from microbatching import QueueFullError

    async def main() -> Job[Any]:
        async with AsyncMicroBatching(None, Recorder(lambda n: 0.1), takes="items", max_pending=1) as mb:
            first = mb.submit_nowait("first")
            refused: Job[Any] = Job(data="refused")
            with pytest.raises(QueueFullError):
                mb.submit_job_nowait(refused, deadline=0.5)
            await first
            return refused

    assert vrun(main()).deadline is None
