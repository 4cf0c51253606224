"""Property tests: for random job streams, failure patterns and options, every accepted job gets
exactly one final outcome, the right one, and no batch exceeds its limits."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from conftest import vrun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microbatching import AsyncMicroBatching, Batch, Job, JobFailedError, RetryPolicy
from microbatching.errors import BatchResultError

ALWAYS = 99  # a job that fails on every attempt

job_specs = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05]),  # gap before submitting
        st.sampled_from([0, 0, 0, 1, 2, ALWAYS]),  # failing attempts before success
        st.integers(min_value=1, max_value=6),  # weight
    ),
    min_size=1,
    max_size=120,
)
options = st.fixed_dictionaries(
    {
        "batch_size": st.integers(min_value=1, max_value=16),
        "batch_interval": st.sampled_from([0.0, 0.002, 0.02, 0.1]),
        "max_concurrent_batches": st.integers(min_value=1, max_value=3),
        "max_attempts": st.integers(min_value=1, max_value=3),
        "max_batch_weight": st.sampled_from([None, 8.0, 20.0]),
        "batch_raises_every": st.sampled_from([0, 3, 7]),  # every n-th batch raises as a whole
        "short_result_every": st.sampled_from([0, 5]),  # every n-th batch returns too few results
    }
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=job_specs, opts=options)
def test_every_job_gets_exactly_one_correct_outcome_within_limits(
    specs: list[tuple[float, int, int]], opts: dict[str, Any]
) -> None:
    batches: list[list[Job[int]]] = []
    batch_calls = 0

    async def processor(jobs: list[Job[int]]) -> list[Any]:
        nonlocal batch_calls
        batch_calls += 1
        batches.append(list(jobs))
        await asyncio.sleep(0.003 * len(jobs))
        if opts["batch_raises_every"] and batch_calls % opts["batch_raises_every"] == 0:
            raise ConnectionError("whole batch down")
        if opts["short_result_every"] and batch_calls % opts["short_result_every"] == 0:
            return [job.data for job in jobs[1:]]
        return [
            RuntimeError(f"job {job.id} failing") if job.attempts <= specs[job.data][1] else job.data * 2
            for job in jobs
        ]

    weight_options: dict[str, Any] = {}
    if opts["max_batch_weight"] is not None:
        weight_options = {
            "max_batch_weight": opts["max_batch_weight"],
            "weight": lambda job: specs[job.data][2],
        }

    async def main() -> tuple[list[Any], AsyncMicroBatching]:
        mb = AsyncMicroBatching(
            None,
            processor,
            batch_size=opts["batch_size"],
            batch_interval=opts["batch_interval"],
            max_concurrent_batches=opts["max_concurrent_batches"],
            retry=RetryPolicy(max_attempts=opts["max_attempts"], base_delay=0.004, jitter=0.5),
            **weight_options,
        )
        final_events: Counter[int] = Counter()
        mb.on("job_completed", lambda job, result: final_events.update([job.data]))
        mb.on("job_failed", lambda job, error: final_events.update([job.data]))
        futures = []
        for index, (gap, _, _) in enumerate(specs):
            if gap:
                await asyncio.sleep(gap)
            futures.append(mb.submit_job_nowait(Job(index, index)))
        await mb.shutdown()
        assert all(future.done() for future in futures)  # settled by shutdown, nothing awaited yet
        assert final_events == Counter(range(len(specs)))  # exactly one final outcome each
        return [future.exception() or future.result() for future in futures], mb

    outcomes, mb = vrun(main())

    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, JobFailedError):
            assert outcome.job.data == index
            assert 1 <= outcome.attempts <= opts["max_attempts"]
            if not isinstance(outcome.cause, BatchResultError):
                assert outcome.attempts == opts["max_attempts"]
        else:
            assert outcome == index * 2  # the right result reached the right job
            assert (
                specs[index][1] < opts["max_attempts"]
                or opts["batch_raises_every"]
                or opts["short_result_every"]
            )

    for batch in batches:
        assert 1 <= len(batch) <= opts["batch_size"]
        assert len({job.data for job in batch}) == len(batch)  # a job is in a batch at most once
        if opts["max_batch_weight"] is not None and len(batch) > 1:
            assert sum(specs[job.data][2] for job in batch) <= opts["max_batch_weight"]

    stats = mb.stats()
    assert stats.pending == 0 and stats.buffered == 0 and stats.in_flight == 0 and stats.retrying == 0
    assert stats.completed + stats.failed == len(specs)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30),
    batch_size=st.integers(min_value=1, max_value=25),
)
def test_time_trigger_never_fires_before_the_interval_on_the_virtual_clock(
    sizes: list[int], batch_size: int
) -> None:
    started: list[Batch] = []

    async def main() -> None:
        async def echo(jobs: list[Job[int]]) -> list[int]:
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, echo, batch_size=batch_size, batch_interval=0.05)
        mb.on("batch_started", started.append)
        futures = []
        for burst, size in enumerate(sizes):
            futures.extend(mb.submit_job_nowait(Job(None, burst)) for _ in range(size))
            await asyncio.sleep(0.013 * (burst % 5))
        await asyncio.gather(*futures)
        await mb.shutdown()

    vrun(main())
    for batch in started:
        assert batch.started_at is not None
        waited = batch.started_at - min(job.submitted_at for job in batch.jobs)  # type: ignore[type-var]
        if batch.trigger == "time":
            assert waited >= 0.05 - 1e-9
        assert len(batch) <= batch_size
