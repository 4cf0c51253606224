"""Submitting plain items (no Job): submit_nowait/submit/submit_many on both batchers,
``takes="items"``, and ``f.nowait``/``f.many`` on ``@batch`` — the same guarantees as the
Job path: every item gets its own outcome, in its slot, and no caller hangs."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest
from conftest import vrun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microbatching
from microbatching import (
    AsyncMicroBatching,
    Job,
    JobCancelledError,
    JobFailedError,
    MicroBatching,
    QueueFullError,
    RetryPolicy,
)
from microbatching.errors import BatchResultError, ShutdownError


def _data(jobs: list[Job[Any]]) -> list[Any]:
    return [job.data for job in jobs]


# -- AsyncMicroBatching --------------------------------------------------------------------


def test_submit_nowait_hands_the_processor_jobs_carrying_the_items() -> None:
    seen: list[list[Any]] = []

    async def processor(jobs: list[Job[int]]) -> list[int]:
        assert all(isinstance(job, Job) for job in jobs)
        seen.append(_data(jobs))
        return [job.data * 10 for job in jobs]

    async def main() -> list[int]:
        async with AsyncMicroBatching(None, processor, batch_size=3, batch_interval=0.01) as mb:
            futures = [mb.submit_nowait(n) for n in range(7)]
            return list(await asyncio.gather(*futures))

    assert vrun(main()) == [n * 10 for n in range(7)]
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]


def test_takes_items_hands_the_processor_the_items_themselves() -> None:
    seen: list[list[Any]] = []

    def processor(items: list[str]) -> list[int]:
        seen.append(list(items))
        return [len(item) for item in items]

    async def main() -> tuple[list[int], list[Any]]:
        async with AsyncMicroBatching(None, processor, batch_size=10, takes="items") as mb:
            one = await mb.submit("abc")
            many = await mb.submit_many(["a", "bb"])
            jobs = await mb.submit_job_nowait(Job("k", "dddd"))  # Job path, same processor
            return [await one, jobs], many

    assert vrun(main()) == ([3, 4], [1, 2])
    assert sorted(item for batch in seen for item in batch) == ["a", "abc", "bb", "dddd"]
    assert all(isinstance(item, str) for batch in seen for item in batch)


def test_takes_refuses_an_unknown_value_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"takes must be 'jobs' or 'items', got 'item'"):
        AsyncMicroBatching(None, _data, takes="item")


def test_submit_many_returns_results_in_order_with_failures_in_their_slots() -> None:
    calls: list[int] = []

    def processor(items: list[int]) -> list[Any]:
        calls.append(len(items))
        return [ValueError(f"bad {n}") if n % 4 == 0 else n + 1 for n in items]

    async def main() -> list[Any]:
        async with AsyncMicroBatching(None, processor, batch_size=5, takes="items", retry=None) as mb:
            return await mb.submit_many(range(12))

    results = vrun(main())
    assert len(results) == 12
    for n, result in enumerate(results):
        if n % 4 == 0:
            assert isinstance(result, JobFailedError)
            assert str(result.cause) == f"bad {n}" and result.attempts == 1
        else:
            assert result == n + 1
    assert calls == [5, 5, 2]  # batches of batch_size, leaving at once


def test_submit_many_retries_a_failed_item_alone_and_fills_its_slot() -> None:
    attempts: Counter[int] = Counter()

    def processor(items: list[int]) -> list[Any]:
        attempts.update(items)
        return [ConnectionError("flaky") if n == 2 and attempts[n] < 3 else n for n in items]

    async def main() -> list[Any]:
        policy = RetryPolicy(max_attempts=3, base_delay=0.01)
        async with AsyncMicroBatching(None, processor, batch_size=10, takes="items", retry=policy) as mb:
            return await mb.submit_many([1, 2, 3])

    assert vrun(main()) == [1, 2, 3]
    assert attempts == Counter({1: 1, 2: 3, 3: 1})


def test_submit_many_of_nothing_is_an_empty_list() -> None:
    async def main() -> list[Any]:
        async with AsyncMicroBatching(None, _data) as mb:
            return await mb.submit_many([])

    assert vrun(main()) == []


def test_submit_many_with_a_wrong_result_count_fails_each_item_by_name() -> None:
    async def main() -> list[Any]:
        async with AsyncMicroBatching(None, lambda items: [1], takes="items", retry=None) as mb:
            return await mb.submit_many([1, 2, 3])

    results = vrun(main())
    assert all(isinstance(r, JobFailedError) and isinstance(r.cause, BatchResultError) for r in results)
    assert "3" in str(results[0].cause) and "1" in str(results[0].cause)


@pytest.mark.parametrize("with_listener", [False, True])
def test_submit_many_waits_for_room_under_max_pending(with_listener: bool) -> None:
    most_in_flight = 0
    in_flight = 0

    async def processor(items: list[int]) -> list[int]:
        nonlocal in_flight, most_in_flight
        in_flight += len(items)
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= len(items)
        return items

    async def main() -> list[Any]:
        async with AsyncMicroBatching(
            None, processor, batch_size=4, max_pending=6, takes="items", max_concurrent_batches=4
        ) as mb:
            if with_listener:
                mb.on("job_added", lambda job: None)
            return await mb.submit_many(range(30))

    assert vrun(main()) == list(range(30))
    assert most_in_flight <= 6


def test_submit_nowait_refuses_at_max_pending() -> None:
    async def main() -> None:
        async with AsyncMicroBatching(None, _data, batch_size=100, batch_interval=1, max_pending=2) as mb:
            first, second = mb.submit_nowait(1), mb.submit_nowait(2)
            with pytest.raises(QueueFullError):
                mb.submit_nowait(3)
            mb.flush()
            assert list(await asyncio.gather(first, second)) == [1, 2]

    vrun(main())


def test_submit_many_cut_short_by_a_cancelling_shutdown_settles_every_slot() -> None:
    started = asyncio.Event()

    async def processor(items: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(10)
        return items

    async def main() -> list[Any]:
        mb = AsyncMicroBatching(None, processor, batch_size=2, batch_interval=0.01, takes="items")
        mb.start()
        many = asyncio.ensure_future(mb.submit_many(range(5)))
        await started.wait()
        await mb.shutdown(cancel=True)
        return await asyncio.wait_for(many, 1)

    results = vrun(main())
    assert len(results) == 5
    assert all(isinstance(result, JobCancelledError) for result in results)


def test_submit_nowait_from_another_thread_is_refused_with_a_pointer_to_microbatching() -> None:
    errors: list[BaseException] = []

    async def main() -> None:
        async with AsyncMicroBatching(None, _data, batch_size=10, batch_interval=0.05) as mb:

            def from_a_thread() -> None:
                try:
                    mb.submit_nowait(1)
                except RuntimeError as exc:
                    errors.append(exc)

            thread = threading.Thread(target=from_a_thread)
            thread.start()
            thread.join()

    asyncio.run(main())
    assert len(errors) == 1 and "MicroBatching" in str(errors[0])


def test_submit_after_shutdown_is_refused() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, _data)
        mb.start()
        await mb.shutdown()
        with pytest.raises(ShutdownError, match="is closed: it accepts no new jobs"):
            mb.submit_nowait(1)
        with pytest.raises(ShutdownError, match="is closed: it accepts no new jobs"):
            await mb.submit_many([1])

    vrun(main())


def test_items_on_a_durable_queue_are_stored_and_processed(tmp_path: Any) -> None:
    from microbatching.queues import SQLiteQueue

    async def main() -> tuple[Any, list[Any]]:
        queue = SQLiteQueue(str(tmp_path / "items.db"))
        async with AsyncMicroBatching(queue, lambda items: [n * 2 for n in items], takes="items") as mb:
            one = await mb.submit(5)
            return await one, await mb.submit_many([1, 2, 3])

    assert asyncio.run(main()) == (10, [2, 4, 6])


# -- MicroBatching ---------------------------------------------------------------------------


def test_sync_submit_and_submit_many_from_threads() -> None:
    calls: list[int] = []

    def processor(items: list[int]) -> list[int]:
        calls.append(len(items))
        return [n * 3 for n in items]

    with MicroBatching(None, processor, batch_size=50, batch_interval=0.005, takes="items") as mb:
        handles: list[Any] = []
        lock = threading.Lock()

        def producer(start: int) -> None:
            mine = [mb.submit(n) for n in range(start, start + 100)]
            with lock:
                handles.extend(mine)

        threads = [threading.Thread(target=producer, args=(k * 100,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        many = mb.submit_many(range(1000, 1250))
        assert many.result(timeout=10) == [n * 3 for n in range(1000, 1250)]
        assert sorted(h.result(timeout=10) for h in handles) == [n * 3 for n in range(400)]
    assert sum(calls) == 650 and max(calls) <= 50


def test_sync_submit_many_puts_failures_in_their_slots() -> None:
    def processor(items: list[int]) -> list[Any]:
        return [KeyError(n) if n == 1 else n for n in items]

    with MicroBatching(None, processor, takes="items", retry=None) as mb:
        results = mb.submit_many([0, 1, 2]).result(timeout=5)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], JobFailedError) and isinstance(results[1].cause, KeyError)


def test_sync_submit_many_without_room_and_without_blocking_raises() -> None:
    release = threading.Event()

    def processor(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    with MicroBatching(None, processor, batch_size=1, max_pending=2, takes="items") as mb:
        held = mb.submit_many([1, 2])
        with pytest.raises(QueueFullError):
            mb.submit_many([3], block=False)
        release.set()
        assert held.result(timeout=5) == [1, 2]


def test_sync_submit_on_a_stopped_batcher_is_refused() -> None:
    mb = MicroBatching(None, _data)
    mb.start()
    mb.shutdown()
    with pytest.raises(ShutdownError, match="is closed: it accepts no new jobs"):
        mb.submit(1)
    with pytest.raises(ShutdownError, match="is closed: it accepts no new jobs"):
        mb.submit_many([1])


# -- @batch ----------------------------------------------------------------------------------


def test_decorator_nowait_and_many_batch_together() -> None:
    sizes: list[int] = []

    @microbatching.batch(batch_size=8, batch_interval=0.01)
    async def square(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [x * x for x in items]

    async def main() -> tuple[list[int], list[Any], int]:
        quick = [square.nowait(n) for n in range(5)]
        many = await square.many(range(5, 15))
        return list(await asyncio.gather(*quick)), many, await square(20)

    quick, many, single = asyncio.run(main())
    assert quick == [n * n for n in range(5)]
    assert many == [n * n for n in range(5, 15)]
    assert single == 400
    assert max(sizes) <= 8


def test_sync_decorator_many_returns_results_in_order() -> None:
    @microbatching.batch(batch_size=4, batch_interval=0.005)
    def lengths(words: list[str]) -> list[int]:
        return [len(w) for w in words]

    assert lengths.many(["a", "bb", "ccc", "dddd", "eeeee"]) == [1, 2, 3, 4, 5]


# -- the guarantees, over random mixes of the three paths -------------------------------------

ALWAYS = 99

item_specs = st.lists(
    st.tuples(
        st.sampled_from(["job", "item", "many"]),  # how it is submitted
        st.sampled_from([0.0, 0.0, 0.002, 0.02]),  # gap before it
        st.sampled_from([0, 0, 0, 1, ALWAYS]),  # failing attempts before success
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=item_specs,
    batch_size=st.integers(min_value=1, max_value=12),
    interval=st.sampled_from([0.0, 0.005, 0.05]),
    max_attempts=st.integers(min_value=1, max_value=3),
    takes=st.sampled_from(["jobs", "items"]),
    listen=st.booleans(),
    raises_every=st.sampled_from([0, 4]),
)
def test_every_item_gets_exactly_one_correct_outcome_whatever_path(
    specs: list[tuple[str, float, int]],
    batch_size: int,
    interval: float,
    max_attempts: int,
    takes: str,
    listen: bool,
    raises_every: int,
) -> None:
    tries: Counter[int] = Counter()
    batches: list[list[int]] = []

    async def processor(batch: list[Any]) -> list[Any]:
        indexes = [entry.data for entry in batch] if takes == "jobs" else list(batch)
        batches.append(indexes)
        tries.update(indexes)
        await asyncio.sleep(0.001 * len(batch))
        if raises_every and len(batches) % raises_every == 0:
            raise ConnectionError("whole batch down")
        return [RuntimeError("not yet") if tries[i] <= specs[i][2] else i * 2 for i in indexes]

    async def main() -> tuple[list[Any], AsyncMicroBatching]:
        mb = AsyncMicroBatching(
            None,
            processor,
            batch_size=batch_size,
            batch_interval=interval,
            takes=takes,
            retry=RetryPolicy(max_attempts=max_attempts, base_delay=0.003, jitter=0.5),
        )
        finals: Counter[int] = Counter()
        if listen:
            mb.on("job_completed", lambda job, result: finals.update([job.data]))
            mb.on("job_failed", lambda job, error: finals.update([job.data]))
        mb.start()
        slots: list[Any] = [None] * len(specs)
        manys: list[tuple[list[int], asyncio.Future[list[Any]]]] = []
        index = 0
        while index < len(specs):
            how, gap, _ = specs[index]
            if gap:
                await asyncio.sleep(gap)
            if how == "many":  # this and the following "many" entries go in one call
                group = [index]
                while group[-1] + 1 < len(specs) and specs[group[-1] + 1][0] == "many":
                    group.append(group[-1] + 1)
                manys.append((group, asyncio.ensure_future(mb.submit_many(group))))
                await asyncio.sleep(0)  # let it submit before anything else happens
                index = group[-1] + 1
                continue
            slots[index] = (
                mb.submit_nowait(index) if how == "item" else mb.submit_job_nowait(Job(index, index))
            )
            index += 1
        await mb.shutdown()
        outcomes: list[Any] = [None] * len(specs)
        for i, future in enumerate(slots):
            if future is not None:
                assert future.done()  # settled by shutdown
                outcomes[i] = future.exception() or future.result()
        for group, many in manys:
            results = await asyncio.wait_for(many, 1)
            assert len(results) == len(group)
            for i, result in zip(group, results, strict=False):
                outcomes[i] = result
        if listen:
            assert finals == Counter(range(len(specs)))  # one final event each
        return outcomes, mb

    outcomes, mb = vrun(main())
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, JobFailedError):
            assert outcome.job.data == i and 1 <= outcome.attempts <= max_attempts
            assert outcome.attempts == max_attempts
        else:
            assert outcome == i * 2, (i, outcome)
            assert specs[i][2] < max_attempts or raises_every
    for batch in batches:
        assert 1 <= len(batch) <= batch_size and len(set(batch)) == len(batch)
    stats = mb.stats()
    assert stats.pending == 0 and stats.buffered == 0 and stats.in_flight == 0
    assert stats.completed + stats.failed == len(specs)


# -- cancelling an item, submit_many from threads, limits under every path ----------------------


def _doubling_unless_negative(batch: list[int]) -> list[Any]:
    return [ValueError(f"bad {x}") if x < 0 else x * 2 for x in batch]


def test_async_items_get_their_results_and_a_cancelled_one_never_runs() -> None:
    seen: list[list[int]] = []

    async def process(batch: list[int]) -> list[int]:
        seen.append(list(batch))
        return [x * 2 for x in batch]

    async def main() -> None:
        mb = AsyncMicroBatching(None, process, batch_size=4, batch_interval=0.05, retry=None, takes="items")
        async with mb:
            futures = [mb.submit_nowait(x) for x in range(3)]
            assert futures[1].cancel()  # before its batch starts
            results = list(await asyncio.gather(futures[0], futures[2]))
            assert results == [0, 4]
            assert futures[1].cancelled()
        assert seen == [[0, 2]]
        stats = mb.stats()
        assert (stats.completed, stats.cancelled, stats.pending) == (2, 1, 0)

    asyncio.run(main())


def test_sync_items_get_their_results_and_a_cancelled_one_never_runs() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def process(batch: list[int]) -> list[int]:
        gate.wait(5)
        seen.append(list(batch))
        return [x * 2 for x in batch]

    with MicroBatching(None, process, batch_size=2, batch_interval=0.01, retry=None, takes="items") as mb:
        first = [mb.submit(x) for x in (1, 2)]  # a full batch: runs at once, held by the gate
        later = [mb.submit(x) for x in (3, 4)]  # the next batch waits for the running one
        assert later[0].cancel()
        gate.set()
        assert [h.result(timeout=5) for h in first] == [2, 4]
        assert later[1].result(timeout=5) == 8
        assert later[0].cancelled()
    assert seen == [[1, 2], [4]]
    stats = mb.stats()
    assert (stats.completed, stats.cancelled, stats.pending) == (3, 1, 0)


def test_sync_submit_many_from_threads_keeps_each_calls_order() -> None:
    outcomes: dict[int, list[Any]] = {}

    with MicroBatching(None, _doubling_unless_negative, batch_size=16, retry=None, takes="items") as mb:

        def caller(t: int) -> None:
            values = [t * 1000 + i for i in range(250)]
            outcomes[t] = mb.submit_many(values).result(timeout=10)

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
    assert outcomes == {t: [(t * 1000 + i) * 2 for i in range(250)] for t in range(4)}


item_specs = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.001, 0.01]),  # gap before submitting
        st.sampled_from([0, 0, 0, 1, 2, 99]),  # failing attempts before success (99: always)
        st.sampled_from(["nowait", "nowait", "many"]),  # submit_nowait, or part of a submit_many
    ),
    min_size=1,
    max_size=100,
)
item_options = st.fixed_dictionaries(
    {
        "batch_size": st.integers(min_value=1, max_value=16),
        "batch_interval": st.sampled_from([0.0, 0.002, 0.02]),
        "max_concurrent_batches": st.integers(min_value=1, max_value=3),
        "max_attempts": st.integers(min_value=1, max_value=3),
        "batch_raises_every": st.sampled_from([0, 3, 7]),
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=item_specs, opts=item_options)
def test_every_item_gets_exactly_one_correct_outcome_within_limits(
    specs: list[tuple[float, int, str]], opts: dict[str, Any]
) -> None:
    """The item paths (no Job, no listener): submit_nowait and submit_many, with retries and failures."""
    batches: list[list[int]] = []
    attempts: Counter[int] = Counter()

    async def processor(batch: list[int]) -> list[Any]:
        batches.append(list(batch))
        await asyncio.sleep(0.002 * len(batch))
        if opts["batch_raises_every"] and len(batches) % opts["batch_raises_every"] == 0:
            attempts.update(batch)
            raise ConnectionError("whole batch down")
        attempts.update(batch)
        return [RuntimeError(f"{x} failing") if attempts[x] <= specs[x][1] else x * 2 for x in batch]

    async def main() -> tuple[dict[int, Any], AsyncMicroBatching]:
        mb = AsyncMicroBatching(
            None,
            processor,
            takes="items",
            batch_size=opts["batch_size"],
            batch_interval=opts["batch_interval"],
            max_concurrent_batches=opts["max_concurrent_batches"],
            retry=RetryPolicy(max_attempts=opts["max_attempts"], base_delay=0.004, jitter=0.5),
        )
        mb.start()
        futures: dict[int, asyncio.Future[Any]] = {}
        calls: list[tuple[list[int], asyncio.Task[list[Any]]]] = []
        pending_many: list[int] = []
        for index, (gap, _, how) in enumerate(specs):
            if gap:
                await asyncio.sleep(gap)
            if how == "many":
                pending_many.append(index)
                if len(pending_many) == 3 or index == len(specs) - 1:
                    calls.append((pending_many, asyncio.create_task(mb.submit_many(pending_many))))
                    pending_many = []
                    await asyncio.sleep(0)  # the call reaches the batcher now, among the others
            else:
                futures[index] = mb.submit_nowait(index)
        if pending_many:
            calls.append((pending_many, asyncio.create_task(mb.submit_many(pending_many))))
        await asyncio.sleep(0)
        await mb.shutdown()
        outcomes = {i: f.exception() or f.result() for i, f in futures.items()}
        for indexes, call in calls:
            assert call.done()  # settled by shutdown
            outcomes.update(zip(indexes, call.result(), strict=True))
        return outcomes, mb

    outcomes, mb = vrun(main())

    assert sorted(outcomes) == list(range(len(specs)))
    for index, outcome in outcomes.items():
        assert 1 <= attempts[index] <= opts["max_attempts"]
        if isinstance(outcome, JobFailedError):
            assert outcome.attempts == attempts[index] == opts["max_attempts"]
        else:
            assert outcome == index * 2  # the right result reached the right item's slot
    for batch in batches:
        assert 1 <= len(batch) <= opts["batch_size"]
        assert len(set(batch)) == len(batch)  # an item is in a batch at most once
    stats = mb.stats()
    assert stats.pending == 0 and stats.buffered == 0 and stats.in_flight == 0 and stats.retrying == 0
    assert stats.completed + stats.failed == len(specs)
