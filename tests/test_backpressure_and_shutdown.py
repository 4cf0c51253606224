"""max_pending backpressure, graceful shutdown and its variants, lifecycle and context managers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import double, vrun

from microbatching import (
    AsyncMicroBatching,
    Batch,
    Job,
    JobCancelledError,
    MicroBatching,
    QueueFullError,
    RetryPolicy,
    ShutdownError,
    State,
)


async def _sleepy(jobs: list[Job[int]]) -> list[int]:
    await asyncio.sleep(1.0)
    return [job.data for job in jobs]


# -- backpressure ---------------------------------------------------------------------------


def test_async_nowait_raises_at_max_pending_and_accepts_again_after_room() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, _sleepy, batch_size=2, batch_interval=0.01, max_pending=3)
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3)]
        with pytest.raises(QueueFullError, match="max_pending=3"):
            mb.submit_job_nowait(Job(3, 3))
        await futures[0]
        assert await mb.submit_job_nowait(Job(4, 4)) == 4
        await mb.shutdown()

    vrun(main())


def test_async_submit_waits_for_room_then_submits() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        mb = AsyncMicroBatching(None, _sleepy, batch_size=2, batch_interval=0.01, max_pending=2)
        first = [mb.submit_job_nowait(Job(i, i)) for i in range(2)]
        t0 = loop.time()
        third = await mb.submit_job(Job(2, 2))
        assert loop.time() - t0 == pytest.approx(1.0)  # waited for the first batch to finish
        assert await asyncio.gather(*first, third) == [0, 1, 2]
        await mb.shutdown()

    vrun(main())


def test_async_submit_timeout_raises_queue_full() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, _sleepy, batch_size=1, batch_interval=0.01, max_pending=1)
        mb.submit_job_nowait(Job(0, 0))
        with pytest.raises(QueueFullError, match=r"no room within 0\.1s"):
            await mb.submit_job(Job(1, 1), timeout=0.1)
        await mb.shutdown()
        assert mb.stats().submitted == 1

    vrun(main())


def test_async_submitter_blocked_on_room_learns_of_shutdown() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, _sleepy, batch_size=1, batch_interval=0.01, max_pending=1)
        running = mb.submit_job_nowait(Job(0, 0))
        blocked = asyncio.ensure_future(mb.submit_job(Job(1, 1)))
        await asyncio.sleep(0.1)
        await mb.shutdown()
        assert await running == 0
        with pytest.raises(ShutdownError):
            await blocked

    vrun(main())


def test_sync_submit_blocks_then_proceeds_and_nonblocking_raises() -> None:
    gate = threading.Event()

    def gated(jobs: list[Job[int]]) -> list[int]:
        gate.wait(10)
        return [job.data for job in jobs]

    with MicroBatching(None, gated, batch_size=1, batch_interval=0.001, max_pending=2) as mb:
        handles = [mb.submit_job(Job(i, i)) for i in range(2)]
        with pytest.raises(QueueFullError):
            mb.submit_job(Job(9, 9), block=False)
        with pytest.raises(QueueFullError, match=r"no room within 0\.05s"):
            mb.submit_job(Job(9, 9), timeout=0.05)
        threading.Timer(0.2, gate.set).start()
        start = time.monotonic()
        late = mb.submit_job(Job(2, 2))  # blocks until a job finishes
        assert time.monotonic() - start >= 0.15
        assert [h.result(5) for h in [*handles, late]] == [0, 1, 2]


def test_sync_submitter_blocked_on_room_learns_of_shutdown() -> None:
    gate = threading.Event()

    def gated(jobs: list[Job[int]]) -> list[int]:
        gate.wait(10)
        return [job.data for job in jobs]

    mb = MicroBatching(None, gated, batch_size=1, batch_interval=0.001, max_pending=1)
    first = mb.submit_job(Job(0, 0))
    outcome: list[BaseException] = []

    def blocked_submit() -> None:
        try:
            mb.submit_job(Job(1, 1))
        except BaseException as exc:
            outcome.append(exc)

    submitter = threading.Thread(target=blocked_submit)
    submitter.start()
    time.sleep(0.1)
    threading.Timer(0.2, gate.set).start()
    mb.shutdown()
    submitter.join(5)
    assert first.result(0) == 0
    assert len(outcome) == 1 and isinstance(outcome[0], ShutdownError)


# -- shutdown -------------------------------------------------------------------------------


def test_shutdown_flushes_partial_batch_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        mb = AsyncMicroBatching(None, double, batch_size=100, batch_interval=9.0)
        batches: list[Batch] = []
        mb.on("batch_started", batches.append)
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(5)]
        t0 = loop.time()
        await mb.shutdown()
        assert loop.time() == t0  # no waiting for the 60 s interval
        assert [(b.trigger, len(b)) for b in batches] == [("shutdown", 5)]
        assert [f.result() for f in futures] == [0, 2, 4, 6, 8]

    vrun(main())


def test_shutdown_waits_for_in_flight_batches_and_pending_retries() -> None:
    attempts: dict[int, int] = {}

    async def flaky(jobs: list[Job[int]]) -> list[Any]:
        await asyncio.sleep(0.5)
        for job in jobs:
            attempts[job.data] = job.attempts
        return [OSError("again") if job.attempts < 3 else job.data for job in jobs]

    async def main() -> None:
        policy = RetryPolicy(max_attempts=3, base_delay=2.0, jitter=0)
        mb = AsyncMicroBatching(None, flaky, batch_size=10, batch_interval=0.01, retry=policy)
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3)]
        await asyncio.sleep(0.1)
        await mb.shutdown()
        assert [f.result() for f in futures] == [0, 1, 2]
        assert mb.state is State.CLOSED

    vrun(main())
    assert attempts == {0: 3, 1: 3, 2: 3}


def test_submit_after_shutdown_raises_and_restart_is_refused() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, double)
        await mb.submit_job_nowait(Job(1, 1))
        await mb.shutdown()
        with pytest.raises(ShutdownError, match="closed"):
            mb.submit_job_nowait(Job(2, 2))
        with pytest.raises(ShutdownError):
            await mb.submit_job(Job(2, 2))
        with pytest.raises(ShutdownError):
            mb.start()

    vrun(main())
    with MicroBatching(None, lambda jobs: [0 for _ in jobs]) as mb:
        pass
    with pytest.raises(ShutdownError, match="accepts no new jobs"):
        mb.submit_job(Job(1, 1))


def test_shutdown_is_idempotent_and_concurrent_calls_share_one_drain() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, _sleepy, batch_size=5, batch_interval=0.01)
        completed: list[None] = []
        mb.on("shutdown_completed", lambda: completed.append(None))
        future = mb.submit_job_nowait(Job(1, 1))
        await asyncio.gather(mb.shutdown(), mb.shutdown())
        await mb.shutdown()
        assert future.result() == 1
        assert completed == [None]

    vrun(main())
    mb = MicroBatching(None, lambda jobs: [0 for _ in jobs])
    mb.submit_job(Job(1, 1))
    mb.shutdown()
    mb.shutdown()
    assert mb.state is State.CLOSED


def test_shutdown_with_timeout_abandons_what_is_unfinished() -> None:
    async def hangs(jobs: list[Job[int]]) -> list[int]:
        await asyncio.sleep(3600)
        return []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        mb = AsyncMicroBatching(None, hangs, batch_size=1, batch_interval=0.01)
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3)]
        await asyncio.sleep(0.1)
        t0 = loop.time()
        await mb.shutdown(timeout=5)
        assert loop.time() - t0 == pytest.approx(5)
        for future in futures:
            with pytest.raises(JobCancelledError):
                future.result()
        assert mb.stats().pending == 0

    vrun(main())


def test_shutdown_cancel_abandons_buffered_running_and_retrying_jobs_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        calls = 0

        async def first_fails(jobs: list[Job[int]]) -> list[Any]:
            nonlocal calls
            calls += 1
            if calls == 1:
                return [OSError("retry me") for _ in jobs]
            await asyncio.sleep(3600)
            return []

        policy = RetryPolicy(max_attempts=5, base_delay=100, jitter=0)
        mb = AsyncMicroBatching(None, first_fails, batch_size=1, batch_interval=0.01, retry=policy)
        retrying = mb.submit_job_nowait(Job("r", 0))
        await asyncio.sleep(0.1)
        running = mb.submit_job_nowait(Job("run", 1))
        await asyncio.sleep(0.1)
        buffered = mb.submit_job_nowait(Job("buf", 2))
        t0 = loop.time()
        await mb.shutdown(cancel=True)
        assert loop.time() == t0
        for future in (retrying, running, buffered):
            with pytest.raises(JobCancelledError, match="abandoned at shutdown"):
                future.result()
        assert mb.stats().pending == 0

    vrun(main())


def test_sync_shutdown_timeout_and_cancel_return_and_settle_every_handle() -> None:
    release = threading.Event()

    def hangs(jobs: list[Job[int]]) -> list[int]:
        release.wait(10)
        return [job.data for job in jobs]

    for kwargs in ({"timeout": 0.2}, {"cancel": True}):
        mb = MicroBatching(None, hangs, batch_size=1, batch_interval=0.001)
        handles = [mb.submit_job(Job(i, i)) for i in range(3)]
        time.sleep(0.05)
        start = time.monotonic()
        mb.shutdown(**kwargs)  # type: ignore[arg-type]
        assert time.monotonic() - start < 2
        for handle in handles:
            with pytest.raises(JobCancelledError):
                handle.result(timeout=0)
    release.set()


def test_shutdown_from_the_loop_thread_is_refused() -> None:
    mb = MicroBatching(None, lambda jobs: [0 for _ in jobs], batch_size=1)
    errors: list[BaseException] = []

    def handler(batch: Batch) -> None:
        try:
            mb.shutdown()
        except RuntimeError as exc:
            errors.append(exc)

    mb.on("batch_started", handler)
    mb.submit_job(Job(1, 1)).result(5)
    mb.shutdown()
    assert len(errors) == 1 and "would wait for itself" in str(errors[0])


def test_context_managers_start_and_drain() -> None:
    async def main() -> None:
        async with AsyncMicroBatching(None, double, batch_interval=9) as mb:
            assert mb.state is State.RUNNING
            future = mb.submit_job_nowait(Job(1, 21))
        assert mb.state is State.CLOSED
        assert future.result() == 42

    vrun(main())
    with MicroBatching(None, lambda jobs: [j.data for j in jobs], batch_interval=9) as mb:
        handle = mb.submit_job(Job(1, "x"))
    assert handle.result(0) == "x"
    assert mb.state is State.CLOSED


def test_shutdown_before_start_just_closes() -> None:
    mb = MicroBatching(None, lambda jobs: [])
    mb.shutdown()
    assert mb.state is State.CLOSED

    async def main() -> None:
        amb = AsyncMicroBatching(None, double)
        await amb.shutdown()
        assert amb.state is State.CLOSED

    vrun(main())
