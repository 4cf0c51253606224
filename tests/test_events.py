"""The EventEmitter API and the lifecycle events; a raising handler never breaks the engine."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import vrun

from microbatching import EVENTS, AsyncMicroBatching, EventEmitter, Job, MicroBatching, RetryPolicy


def test_on_once_off_emit_and_listeners() -> None:
    emitter = EventEmitter()
    seen: list[Any] = []

    def always(job: Any) -> None:
        seen.append(("always", job))

    def first_only(job: Any) -> None:
        seen.append(("once", job))

    emitter.on("job_added", always)
    emitter.once("job_added", first_only)
    assert emitter.listeners("job_added") == [always, first_only]
    assert emitter.emit("job_added", 1) is True
    assert emitter.emit("job_added", 2) is True
    emitter.off("job_added", always)
    assert emitter.emit("job_added", 3) is False
    assert seen == [("always", 1), ("once", 1), ("always", 2)]


def test_once_handler_can_be_removed_before_it_fires() -> None:
    emitter = EventEmitter()
    seen: list[Any] = []
    emitter.once("job_added", seen.append)
    emitter.remove_listener("job_added", seen.append)
    emitter.emit("job_added", 1)
    assert seen == []


def test_decorator_form_and_remove_all_listeners() -> None:
    emitter = EventEmitter()
    seen: list[Any] = []

    @emitter.on("batch_started")
    def handler(batch: Any) -> None:
        seen.append(batch)

    emitter.emit("batch_started", "b")
    emitter.remove_all_listeners("batch_started")
    emitter.emit("batch_started", "c")
    emitter.on("job_added", seen.append)
    emitter.remove_all_listeners()
    emitter.emit("job_added", "d")
    assert seen == ["b"]


def test_unknown_event_and_non_callable_are_refused() -> None:
    emitter = EventEmitter()
    with pytest.raises(ValueError, match="unknown event 'job_complete'; the events are: job_added"):
        emitter.on("job_complete", print)
    with pytest.raises(TypeError, match="must be callable"):
        emitter.on("job_added", 42)  # type: ignore[call-overload]


def test_every_lifecycle_event_fires_with_its_arguments() -> None:
    log: list[tuple[Any, ...]] = []

    async def main() -> None:
        async def processor(jobs: list[Job[str]]) -> list[Any]:
            if jobs[0].data == "boom":
                raise RuntimeError("batch down")
            return [ValueError("bad") if j.data == "bad" else j.data.upper() for j in jobs]

        policy = RetryPolicy(max_attempts=2, base_delay=0.5, jitter=0)
        mb = AsyncMicroBatching(None, processor, batch_size=2, batch_interval=0.01, retry=policy)
        for name in EVENTS:
            if name != "error":
                mb.on(name, lambda *args, name=name: log.append((name, *args)))
        futures = [mb.submit_job_nowait(Job(i, d)) for i, d in enumerate(["ok", "bad"])]
        await asyncio.gather(*futures, return_exceptions=True)
        boom = mb.submit_job_nowait(Job(9, "boom"))
        await asyncio.gather(boom, return_exceptions=True)
        await mb.shutdown()

    vrun(main())
    names = [entry[0] for entry in log]
    for name in EVENTS:
        if name != "error":
            assert name in names
    added = [entry[1].id for entry in log if entry[0] == "job_added"]
    assert added == [0, 1, 9]
    completed = [(entry[1].id, entry[2]) for entry in log if entry[0] == "job_completed"]
    assert completed == [(0, "OK")]
    retrying = [
        (entry[1].id, type(entry[2]).__name__, entry[3]) for entry in log if entry[0] == "job_retrying"
    ]
    assert retrying == [(1, "ValueError", 0.5), (9, "RuntimeError", 0.5)]
    batch_failed = [entry for entry in log if entry[0] == "batch_failed"]
    assert str(batch_failed[0][2]) == "batch down"
    failed_ids = sorted(entry[1].id for entry in log if entry[0] == "job_failed")
    assert failed_ids == [1, 9]
    assert names[-2:] == ["shutdown_started", "shutdown_completed"] or names[-1] == "shutdown_completed"


def test_raising_sync_handler_goes_to_error_event_and_engine_carries_on() -> None:
    errors: list[tuple[BaseException, str]] = []

    async def main() -> None:
        async def echo(jobs: list[Job[int]]) -> list[int]:
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, echo, batch_size=1, batch_interval=0.01)

        def broken(*args: Any) -> None:
            raise ZeroDivisionError("handler bug")

        for name in ("job_added", "batch_started", "batch_completed", "job_completed"):
            mb.on(name, broken)
        mb.on("error", lambda error, event: errors.append((error, event)))
        assert await mb.submit_job_nowait(Job(1, 1)) == 1
        await mb.shutdown()

    vrun(main())
    assert sorted(event for _, event in errors) == [
        "batch_completed",
        "batch_started",
        "job_added",
        "job_completed",
    ]
    assert all(isinstance(error, ZeroDivisionError) for error, _ in errors)


def test_raising_handler_without_error_listener_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with MicroBatching(None, lambda jobs: [1 for _ in jobs], batch_size=1) as mb:
        mb.on("batch_started", lambda batch: 1 / 0)
        with caplog.at_level(logging.ERROR, logger="microbatching"):
            assert mb.submit_job(Job(1, 1)).result(5) == 1
    assert "'batch_started' event handler raised" in caplog.text


def test_async_handlers_run_and_their_errors_are_reported() -> None:
    seen: list[Any] = []
    errors: list[str] = []

    async def main() -> None:
        async def echo(jobs: list[Job[int]]) -> list[int]:
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, echo, batch_size=1, batch_interval=0.01)

        async def slow_handler(job: Job[int], result: int) -> None:
            await asyncio.sleep(1)
            seen.append(result)

        async def failing(job: Job[int]) -> None:
            raise KeyError("async handler bug")

        mb.on("job_completed", slow_handler)
        mb.on("job_added", failing)
        mb.on("error", lambda error, event: errors.append(event))
        await mb.submit_job_nowait(Job(1, 7))
        await mb.shutdown()  # waits for the async handlers

    vrun(main())
    assert seen == [7]
    assert errors == ["job_added"]


def test_handlers_added_from_the_sync_facade_see_events() -> None:
    results: list[Any] = []
    with MicroBatching(
        None, lambda jobs: [j.data * 2 for j in jobs], batch_size=2, batch_interval=0.01
    ) as mb:
        mb.on("batch_completed", lambda batch, res: results.append(list(res)))
        for i in range(4):
            mb.submit_job(Job(i, i))
    assert sorted(results) == [[0, 2], [4, 6]]
