"""Admission runs in one order in both batchers: the same bad submit gets the same error."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microbatching import (
    AsyncMicroBatching,
    Job,
    MicroBatching,
    QueueFullError,
    SerializationError,
    ShutdownError,
)
from microbatching._engine.buffer import Buffer
from microbatching._engine.pending import Pending
from microbatching.queues import SQLiteQueue
from microbatching.testing import VirtualClockLoop


def _first_error(kind: str, queue: Any, submits: list[Any], **options: Any) -> type[BaseException] | None:
    """The error type of the last of ``submits`` on a started batcher of ``kind`` (None: accepted)."""

    def process(jobs: list[Job[Any]]) -> list[Any]:
        return [None] * len(jobs)

    if kind == "sync":
        mb = MicroBatching(queue, process, **options)
        mb.start()
        try:
            for job in submits[:-1]:
                mb.submit_job(job)
            mb.submit_job(submits[-1], block=False)
        except Exception as exc:
            return type(exc)
        finally:
            mb.shutdown(cancel=True)
        return None

    async def main() -> type[BaseException] | None:
        amb = AsyncMicroBatching(queue, process, **options)
        amb.start()
        try:
            for job in submits[:-1]:
                amb.submit_job_nowait(job)
            amb.submit_job_nowait(submits[-1])
        except Exception as exc:
            return type(exc)
        finally:
            await amb.shutdown(cancel=True)
        return None

    return asyncio.run(main())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_unencodable_data_over_max_pending_is_a_serialization_error_in_both(
    kind: str, tmp_path: Path
) -> None:
    # Encoding comes before room: nothing about room is said of a job that cannot be stored.
    queue = SQLiteQueue(tmp_path / "q.db")
    submits = [Job(1, "fits"), Job(2, object())]
    assert _first_error(kind, queue, submits, max_pending=1, batch_interval=9) is SerializationError


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_full_batcher_refuses_with_queue_full_in_both(kind: str) -> None:
    submits = [Job(1, 1), Job(2, 2)]
    assert _first_error(kind, None, submits, max_pending=1, batch_interval=9) is QueueFullError


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_job_already_submitted_is_a_value_error_in_both(kind: str) -> None:
    job = Job(1, 1)
    assert _first_error(kind, None, [job, job], batch_interval=9) is ValueError


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_not_a_job_is_a_type_error_in_both(kind: str) -> None:
    assert _first_error(kind, None, ["just data"]) is TypeError


def test_a_shut_down_batcher_refuses_with_shutdown_error_in_both() -> None:
    mb = MicroBatching(None, lambda jobs: [None] * len(jobs))
    mb.start()
    mb.shutdown()
    with pytest.raises(ShutdownError):
        mb.submit_job(Job(1, 1))

    async def main() -> None:
        amb = AsyncMicroBatching(None, lambda jobs: [None] * len(jobs))
        amb.start()
        await amb.shutdown()
        with pytest.raises(ShutdownError):
            amb.submit_job_nowait(Job(1, 1))

    asyncio.run(main())


# -- the hot admit and the general add batch alike ---------------------------------------------


def _batches(entry: str, arrivals: list[tuple[float, int]], batch_size: int, interval: float) -> list[Any]:
    """The batches a buffer forms from ``arrivals`` (gap before each job, job id), entered by ``entry``."""
    loop = VirtualClockLoop()
    formed: list[tuple[str, list[int], float]] = []

    def on_ready() -> None:
        while (batch := buffer.next_batch()) is not None:
            formed.append((batch.trigger, [job.id for job in batch.jobs], loop.time()))

    def failed(job: Job[Any], error: BaseException) -> None:
        raise AssertionError(f"{job!r} failed: {error!r}")

    buffer = Buffer(batch_size, interval, None, None, Pending(None), on_ready, failed)
    buffer.bind(loop, loop.time)
    enter = buffer.admit if entry == "admit" else buffer.add

    async def feed() -> None:
        for gap, job_id in arrivals:
            await asyncio.sleep(gap)
            job: Job[int] = Job(job_id, job_id)
            job._ready_at = loop.time()
            enter(job)
        await asyncio.sleep(interval * 2 + 1)
        buffer.flush()

    try:
        loop.run_until_complete(feed())
    finally:
        loop.close()
    return formed


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.004, 0.02]), min_size=1, max_size=60),
    batch_size=st.integers(1, 8),
    interval=st.sampled_from([0.0, 0.005, 0.01]),
)
def test_the_hot_admit_batches_exactly_as_add_does(
    gaps: list[float], batch_size: int, interval: float
) -> None:
    arrivals = [(gap, number) for number, gap in enumerate(gaps)]
    assert _batches("admit", arrivals, batch_size, interval) == _batches(
        "add", arrivals, batch_size, interval
    )
