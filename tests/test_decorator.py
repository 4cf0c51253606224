"""``@batch``: batching calls to a list function across concurrent callers, sync and async."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import pytest
from conftest import vrun

import microbatching


def test_async_function_is_batched_across_concurrent_callers() -> None:
    calls: list[list[int]] = []

    @microbatching.batch(batch_size=4, batch_interval=0.01)
    async def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [x * x for x in items]

    async def main() -> list[int]:
        return list(await asyncio.gather(*(square(i) for i in range(10))))

    assert vrun(main()) == [i * i for i in range(10)]
    assert [len(c) for c in calls] == [4, 4, 2]
    assert square.__name__ == "square"


def test_nowait_returns_the_items_plain_future_without_a_coroutine() -> None:
    @microbatching.batch(batch_size=2)
    async def echo(items: list[int]) -> list[int]:
        return items

    async def main() -> None:
        future = echo.nowait(1)
        assert type(future) is asyncio.Future
        assert await future == 1

    vrun(main())


def test_a_batched_async_function_is_called_like_an_async_def() -> None:
    @microbatching.batch(batch_size=8, batch_interval=0.001)
    async def double(items: list[int]) -> list[int]:
        return [x * 2 for x in items]

    assert inspect.iscoroutinefunction(double)
    assert asyncio.run(double(4)) == 8  # a coroutine: asyncio.run takes it

    async def main() -> list[int]:
        tasks = [asyncio.create_task(double(i)) for i in range(3)]
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == [0, 2, 4]  # a second event loop gets its own batcher


@pytest.mark.skipif(not hasattr(asyncio, "TaskGroup"), reason="asyncio.TaskGroup is new in Python 3.11")
def test_a_batched_async_function_runs_in_a_task_group() -> None:
    @microbatching.batch(batch_size=8, batch_interval=0.001)
    async def double(items: list[int]) -> list[int]:
        return [x * 2 for x in items]

    async def main() -> list[int]:
        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
            tasks = [group.create_task(double(i)) for i in range(3)]
        return [task.result() for task in tasks]

    assert asyncio.run(main()) == [0, 2, 4]


def test_weight_receives_the_items_the_function_receives() -> None:
    sizes: list[list[str]] = []

    @microbatching.batch(batch_size=10, batch_interval=0.01, max_batch_weight=6, weight=len)
    async def upper(items: list[str]) -> list[str]:
        sizes.append(items)
        return [item.upper() for item in items]

    async def main() -> list[str]:
        return list(await asyncio.gather(*(upper(word) for word in ["abc", "de", "f", "ghij"])))

    assert vrun(main()) == ["ABC", "DE", "F", "GHIJ"]
    assert all(sum(map(len, batch)) <= 6 for batch in sizes), sizes


def test_batched_functions_type_check_under_mypy_strict(tmp_path: Any) -> None:
    source = tmp_path / "typed_use.py"
    source.write_text(
        "import asyncio\n"
        "import microbatching\n\n"
        "@microbatching.batch(batch_size=8)\n"
        "async def embed(texts: list[str]) -> list[float]:\n"
        "    return [float(len(t)) for t in texts]\n\n"
        "@microbatching.batch\n"
        "def lookup(keys: list[int]) -> list[str]:\n"
        "    return [str(k) for k in keys]\n\n"
        "async def main() -> float:\n"
        "    value: float = await embed('x')\n"
        "    task: asyncio.Task[float] = asyncio.create_task(embed('y'))\n"
        "    fast: asyncio.Future[float] = embed.nowait('z')\n"
        "    name: str = lookup(3)\n"
        "    return value + await task + await fast + len(name)\n"
    )
    import subprocess
    import sys

    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(source)]
    checked = subprocess.run(command, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_failing_item_raises_the_functions_own_error_and_others_succeed() -> None:
    @microbatching.batch(batch_size=3, batch_interval=0.01)
    async def parse(items: list[str]) -> list[Any]:
        return [ValueError(f"not a number: {s}") if not s.isdigit() else int(s) for s in items]

    async def main() -> None:
        outcomes = await asyncio.gather(parse("1"), parse("x"), parse("3"), return_exceptions=True)
        assert outcomes[0] == 1 and outcomes[2] == 3
        assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "not a number: x"

    vrun(main())


def test_sync_function_is_batched_across_threads() -> None:
    sizes: list[int] = []
    barrier = threading.Barrier(8)

    @microbatching.batch(batch_size=8, batch_interval=0.5)
    def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return [x * 2 for x in items]

    results: dict[int, int] = {}

    def call(i: int) -> None:
        barrier.wait()
        results[i] = double(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {i: i * 2 for i in range(8)}
    assert sizes == [8]


def test_sync_decorated_failure_raises_original_error() -> None:
    @microbatching.batch(batch_size=1)
    def explode(items: list[int]) -> list[int]:
        raise LookupError("backend said no")

    with pytest.raises(LookupError, match="backend said no"):
        explode(1)


def test_methods_get_one_batcher_per_instance() -> None:
    class Model:
        def __init__(self, scale: int) -> None:
            self.scale = scale
            self.batches = 0

        @microbatching.batch(batch_size=10, batch_interval=0.01)
        async def predict(self, items: list[int]) -> list[int]:
            self.batches += 1
            return [x * self.scale for x in items]

    async def main() -> None:
        a, b = Model(2), Model(3)
        results = await asyncio.gather(*(a.predict(i) for i in range(3)), *(b.predict(i) for i in range(3)))
        assert list(results) == [0, 2, 4, 0, 3, 6]
        assert (a.batches, b.batches) == (1, 1)

    vrun(main())


def test_bad_decorator_options_fail_at_decoration_time() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):

        @microbatching.batch(batch_size=0)
        async def never(items: list[int]) -> list[int]:
            return items


def test_decorator_works_on_a_new_event_loop() -> None:
    @microbatching.batch(batch_size=2, batch_interval=0.01)
    async def inc(items: list[int]) -> list[int]:
        return [x + 1 for x in items]

    async def main() -> int:
        return await inc(1)

    assert vrun(main()) == 2
    assert vrun(main()) == 2  # a second loop gets its own batcher
