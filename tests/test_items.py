"""Items submitted without a Job: their futures, cancelling one, and submit_many's results in order."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from conftest import vrun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microbatching import AsyncMicroBatching, JobFailedError, MicroBatching, RetryPolicy


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
            results = await asyncio.gather(futures[0], futures[2])
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


def test_submit_many_gives_results_in_order_with_a_failed_item_in_its_slot() -> None:
    async def process(batch: list[int]) -> list[Any]:
        return _doubling_unless_negative(batch)

    async def main() -> list[Any]:
        async with AsyncMicroBatching(None, process, batch_size=3, retry=None, takes="items") as mb:
            return await mb.submit_many([1, 2, -3, 4, 5, 6, 7])

    results = asyncio.run(main())
    assert results[:2] == [2, 4] and results[3:] == [8, 10, 12, 14]
    assert isinstance(results[2], JobFailedError) and isinstance(results[2].__cause__, ValueError)


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
