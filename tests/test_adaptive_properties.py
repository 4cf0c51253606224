"""Property tests of the adaptive policy: for random arrivals, processor costs and caps, on the
virtual clock, it never exceeds a hard cap, never holds a job while a slot is free longer than
its objective allows (no starvation), and settles every handle; with deadlines (under either
policy), no job starts at or after its deadline."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from typing import Any

from conftest import vrun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microbatching import AsyncMicroBatching, DeadlineExceededError, RetryPolicy

#: Loop turns happen at one virtual instant; this is only float slack.
EPSILON = 1e-9

scenarios = st.fixed_dictionaries(
    {
        "seed": st.integers(min_value=0, max_value=10_000),
        "jobs": st.integers(min_value=1, max_value=400),
        "rate": st.sampled_from([20.0, 300.0, 3_000.0, 20_000.0]),  # jobs per second
        "bursty": st.booleans(),  # arrivals in clumps of up to 50 at one instant
        "per_call": st.sampled_from([0.0, 0.001, 0.005]),
        "per_job": st.sampled_from([0.0, 0.00005, 0.0005]),
        "square": st.sampled_from([0.0, 0.000002, 0.00002]),
        "noise": st.sampled_from([0.0, 0.3]),
        "raises_every": st.sampled_from([0, 4]),  # every n-th batch raises as a whole
        "batch_size": st.integers(min_value=1, max_value=300),
        "max_concurrent_batches": st.integers(min_value=1, max_value=3),
        "max_batch_weight": st.sampled_from([None, 10.0, 60.0]),
        "latency_target": st.sampled_from([0.005, 0.05, 0.5]),
        "objective": st.sampled_from(["latency", "cost"]),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=scenarios)
def test_the_adaptive_policy_keeps_its_caps_never_starves_a_job_and_settles_every_handle(
    s: dict[str, Any],
) -> None:
    rng = random.Random(s["seed"])
    weights = [rng.randint(1, 8) for _ in range(s["jobs"])]
    submitted_at: dict[int, float] = {}
    calls: list[tuple[float, float, list[int]]] = []  # (start, end, items)
    running = 0
    most_running = 0

    def cost(size: int) -> float:
        seconds = s["per_call"] + s["per_job"] * size + s["square"] * size * size
        return seconds * (1 + s["noise"] * rng.random())

    async def processor(items: list[int]) -> list[Any]:
        nonlocal running, most_running
        loop = asyncio.get_running_loop()
        running += 1
        most_running = max(most_running, running)
        start = loop.time()
        try:
            await asyncio.sleep(cost(len(items)))
        finally:
            running -= 1
            calls.append((start, loop.time(), list(items)))
        if s["raises_every"] and len(calls) % s["raises_every"] == 0:
            raise ConnectionError("the whole batch failed")
        return [ValueError("odd") if item % 7 == 3 else item * 2 for item in items]

    weight_options: dict[str, Any] = {}
    if s["max_batch_weight"] is not None:
        weight_options = {"max_batch_weight": s["max_batch_weight"], "weight": lambda job: weights[job.data]}

    async def main() -> tuple[list[asyncio.Future[Any]], Any]:
        loop = asyncio.get_running_loop()
        mb = AsyncMicroBatching(
            None,
            processor,
            takes="items",
            retry=None,
            batch_size=s["batch_size"],
            max_concurrent_batches=s["max_concurrent_batches"],
            latency_target=s["latency_target"],
            objective=s["objective"],
            **weight_options,
        )
        futures = []
        for item in range(s["jobs"]):
            if not (s["bursty"] and rng.random() < 0.98 and item % 50):
                await asyncio.sleep(rng.expovariate(s["rate"]))
            submitted_at[item] = loop.time()
            futures.append(mb.submit_nowait(item))
        await asyncio.wait(futures, timeout=3600)
        stats = mb.stats()
        await mb.shutdown()
        return futures, stats

    futures, stats = vrun(main())

    # Every handle settled, with its own outcome.
    assert all(future.done() for future in futures)
    for item, future in enumerate(futures):
        error = future.exception()
        if error is None:
            assert future.result() == item * 2
    assert sorted(item for _, _, items in calls for item in items) == list(range(s["jobs"]))
    assert stats.pending == 0 and stats.completed + stats.failed == s["jobs"]

    # The hard caps.
    assert most_running <= s["max_concurrent_batches"]
    for _, _, items in calls:
        assert len(items) <= s["batch_size"]
        if s["max_batch_weight"] is not None and len(items) > 1:
            assert sum(weights[i] for i in items) <= s["max_batch_weight"]

    # No starvation: past its objective's wait, a job waits only while every slot is busy.
    allowed = 0.0 if s["objective"] == "latency" else s["latency_target"]
    for start, _, items in calls:
        ready = min(submitted_at[i] for i in items)
        if start > ready + allowed + EPSILON:
            idle = _least_busy(calls, ready + allowed + EPSILON, start - EPSILON)
            assert idle >= s["max_concurrent_batches"], (ready, start, allowed)


def _least_busy(calls: list[tuple[float, float, list[int]]], low: float, high: float) -> float:
    """The fewest batches running at any instant in ``[low, high]`` (at most: ``math.inf``)."""
    if high < low:
        return math.inf
    instants = {low, high}
    instants.update(t for start, end, _ in calls for t in (start, end) if low < t < high)
    ordered = sorted(instants)
    probes = ordered + [(a + b) / 2 for a, b in itertools.pairwise(ordered)]
    return min(sum(start <= t < end for start, end, _ in calls) for t in probes)


deadline_scenarios = st.fixed_dictionaries(
    {
        "seed": st.integers(min_value=0, max_value=10_000),
        "jobs": st.integers(min_value=1, max_value=300),
        "rate": st.sampled_from([50.0, 1_000.0, 10_000.0]),
        "per_call": st.sampled_from([0.001, 0.005, 0.02]),
        "per_job": st.sampled_from([0.0, 0.0001, 0.001]),
        "noise": st.sampled_from([0.0, 0.5]),
        "with_deadline": st.sampled_from([0.0, 0.5, 1.0]),  # the share of jobs that carry one
        "deadline": st.sampled_from([0.002, 0.02, 0.2]),  # the longest, drawn uniformly up to it
        "fails_every": st.sampled_from([0, 3]),  # every n-th item fails once (and is retried)
        "batch_size": st.integers(min_value=1, max_value=100),
        "max_concurrent_batches": st.integers(min_value=1, max_value=3),
        "latency_target": st.sampled_from([0.01, 0.1]),
        "objective": st.sampled_from(["latency", "cost"]),
        "policy": st.sampled_from(["adaptive", "adaptive", "fixed"]),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=deadline_scenarios)
def test_with_deadlines_every_handle_settles_no_job_starts_late_and_the_caps_hold(s: dict[str, Any]) -> None:
    rng = random.Random(s["seed"])
    deadline_of: dict[int, float] = {}
    starts: dict[int, list[float]] = {}
    sizes: list[int] = []
    running = 0
    most_running = 0
    retry = RetryPolicy(max_attempts=2, base_delay=0.001, jitter=0.0)

    async def processor(items: list[int]) -> list[Any]:
        nonlocal running, most_running
        loop = asyncio.get_running_loop()
        running += 1
        most_running = max(most_running, running)
        sizes.append(len(items))
        for item in items:
            starts.setdefault(item, []).append(loop.time())
        try:
            seconds = s["per_call"] + s["per_job"] * len(items)
            await asyncio.sleep(seconds * (1 + s["noise"] * rng.random()))
        finally:
            running -= 1
        every = s["fails_every"]
        return [ValueError("once") if every and item % every == 0 and len(starts[item]) == 1 else item
                for item in items]  # fmt: skip

    if s["policy"] == "adaptive":
        policy: dict[str, Any] = {"latency_target": s["latency_target"], "objective": s["objective"]}
    else:
        policy = {"batch_interval": s["latency_target"] / 4}

    async def main() -> tuple[list[asyncio.Future[Any]], Any]:
        loop = asyncio.get_running_loop()
        mb = AsyncMicroBatching(
            None,
            processor,
            takes="items",
            retry=retry,
            batch_size=s["batch_size"],
            max_concurrent_batches=s["max_concurrent_batches"],
            **policy,
        )
        futures = []
        for item in range(s["jobs"]):
            await asyncio.sleep(rng.expovariate(s["rate"]))
            if rng.random() < s["with_deadline"]:
                seconds = rng.uniform(s["deadline"] / 10, s["deadline"])
                deadline_of[item] = loop.time() + seconds
                futures.append(mb.submit_nowait(item, deadline=seconds))
            else:
                futures.append(mb.submit_nowait(item))
        await asyncio.wait(futures, timeout=3600)
        stats = mb.stats()
        await mb.shutdown()
        return futures, stats

    futures, stats = vrun(main())

    assert all(future.done() for future in futures)  # every handle settled
    late = 0
    for item, future in enumerate(futures):
        error = future.exception()
        if isinstance(error, DeadlineExceededError):
            late += 1
            assert item in deadline_of
        elif error is None:
            assert future.result() == item
        for start in starts.get(item, []):  # no attempt starts at or after the job's deadline
            assert start < deadline_of.get(item, math.inf), (item, start, deadline_of[item])
    assert stats.deadline_exceeded == late
    assert stats.pending == 0 and stats.completed + stats.failed == s["jobs"]
    assert most_running <= s["max_concurrent_batches"]
    assert all(size <= s["batch_size"] for size in sizes)
