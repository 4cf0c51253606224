"""Items submitted without a Job: their futures, cancelling one, and submit_many's results in order."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from microbatching import AsyncMicroBatching, JobFailedError, MicroBatching


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
