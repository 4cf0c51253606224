"""No submitter hangs and no count drifts, whatever hooks, queues and threads do.

Each test pins down a failure found in review: a raising retry predicate, duplicate ids
through a copying queue, foreign jobs under max_pending, racing shutdowns, interrupts on
the private loop, a dying queue consumer, lost wake-ups, handlers awaiting shutdown.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import vrun

from microbatching import (
    AsyncMicroBatching,
    Batch,
    EventEmitter,
    Job,
    JobFailedError,
    MicroBatching,
    QueueFullError,
    RetryPolicy,
    ShutdownError,
    State,
)


def ident(jobs: list[Job[Any]]) -> list[Any]:
    return [job.data for job in jobs]


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="microbatching")


def test_a_retry_predicate_that_raises_fails_the_jobs_and_the_batcher_carries_on() -> None:
    def needs_response(error: BaseException) -> bool:
        return error.response.status >= 500  # type: ignore[attr-defined]  # raises on ValueError

    async def main() -> None:
        async def boom(jobs: list[Job[int]]) -> list[int]:
            if jobs[0].data < 2:
                raise ValueError("processor failed")
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, boom, batch_size=2, retry=RetryPolicy(retry_on=needs_response))
        failed = [mb.submit_job_nowait(Job(i, i)) for i in range(2)]
        for future in failed:
            with pytest.raises(JobFailedError, match="processor failed"):
                await future
        assert await mb.submit_job_nowait(Job(2, 2)) == 2
        await asyncio.wait_for(mb.shutdown(), 5)
        assert mb.stats().pending == 0

    vrun(main())


class CopyingQueue:
    """Hands back copies, as a serializing queue does, on the caller's thread."""

    def __init__(self) -> None:
        self.callback: Callable[[Job[Any]], Any] | None = None

    def add(self, job: Job[Any]) -> None:
        assert self.callback is not None
        self.callback(copy.copy(job))

    def process(self, callback: Callable[[Job[Any]], Any]) -> None:
        self.callback = callback


def test_jobs_sharing_an_id_through_a_copying_queue_each_get_their_own_result() -> None:
    with MicroBatching(CopyingQueue(), ident, batch_size=2, batch_interval=0.01) as mb:
        first = mb.submit_job(Job("same", "first"))
        second = mb.submit_job(Job("same", "second"))
        assert (first.result(5), second.result(5)) == ("first", "second")
    assert mb.stats().pending == 0


def test_sync_max_pending_still_bounds_after_jobs_delivered_from_elsewhere() -> None:
    class SharedQueue(CopyingQueue):
        def process(self, callback: Callable[[Job[Any]], Any]) -> None:
            self.callback = callback
            for i in range(20):  # another producer's jobs, delivered here
                callback(Job(f"foreign-{i}", i))

    gate = threading.Event()

    def gated(jobs: list[Job[Any]]) -> list[Any]:
        gate.wait(10)
        return ident(jobs)

    with MicroBatching(SharedQueue(), ident, batch_size=5, batch_interval=0.01, max_pending=2) as mb:
        deadline = time.monotonic() + 5
        while mb.stats().completed < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        mb._engine._func = gated
        accepted = [mb.submit_job(Job(i, i), block=False) for i in range(2)]
        with pytest.raises(QueueFullError):
            mb.submit_job(Job(9, 9), block=False)
        gate.set()
        assert [h.result(5) for h in accepted] == [0, 1]


def _shut_down(mb: MicroBatching, done: list[bool]) -> None:
    mb.shutdown()
    done.append(True)


def test_shutdown_from_two_threads_at_once_returns_in_both() -> None:
    for _ in range(30):
        mb = MicroBatching(None, ident, batch_size=1)
        handle = mb.submit_job(Job(1, 1))
        done: list[bool] = []
        threads = [threading.Thread(target=_shut_down, args=(mb, done)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert done == [True, True]
        assert handle.result(0) == 1 and mb.state is State.CLOSED


def test_a_submit_that_races_past_shutdown_fails_with_shutdown_error() -> None:
    mb = MicroBatching(None, ident)
    mb.start()
    late = Job(1, 1)
    handle = mb.submit_job(Job(0, 0))
    mb.shutdown()
    # What a submitter that passed the lifecycle check just before shutdown would do next:
    from microbatching import JobResult

    late_handle = JobResult(late)
    late._handle = late_handle
    mb._engine.inbox.submit(late)
    assert handle.result(0) == 0
    with pytest.raises(ShutdownError):
        late_handle.result(timeout=1)


def test_system_exit_from_an_async_processor_does_not_kill_the_private_loop() -> None:
    async def process(jobs: list[Job[int]]) -> list[int]:
        if jobs[0].data == 1:
            raise SystemExit(3)
        return ident(jobs)

    with MicroBatching(None, process, batch_size=1, retry=None) as mb:
        with pytest.raises(JobFailedError, match="SystemExit"):
            mb.submit_job(Job(1, 1)).result(5)
        assert mb.submit_job(Job(2, 2)).result(5) == 2
        assert mb._thread.is_alive()


def test_a_dying_queue_consumer_fails_the_jobs_it_held_and_later_ones() -> None:
    class CrashingQueue:
        def __init__(self) -> None:
            self.items: asyncio.Queue[Job[Any]] = asyncio.Queue()

        def add(self, job: Job[Any]) -> None:
            self.items.put_nowait(job)

        async def process(self, callback: Callable[[Job[Any]], Any]) -> None:
            while True:
                job = await self.items.get()
                if job.data == "poison":
                    raise RuntimeError("consumer crashed")
                callback(job)

    async def main() -> None:
        mb = AsyncMicroBatching(CrashingQueue(), ident, batch_size=1, batch_interval=0.01)
        first = mb.submit_job_nowait(Job(1, "poison"))
        second = mb.submit_job_nowait(Job(2, "ok"))
        for future in (first, second):
            with pytest.raises(JobFailedError, match="consumer crashed"):
                await future
        with pytest.raises(JobFailedError, match="consumer crashed"):
            await mb.submit_job_nowait(Job(3, "later"))
        await asyncio.wait_for(mb.shutdown(), 5)

    vrun(main())


def test_a_woken_room_waiter_that_is_cancelled_hands_its_wake_up_on() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def gated(jobs: list[Job[int]]) -> list[int]:
            await gate.wait()
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, gated, batch_size=1, batch_interval=0.01, max_pending=1)
        first = mb.submit_job_nowait(Job(0, 0))
        waiter_1 = asyncio.ensure_future(mb.submit_job(Job(1, 1)))
        waiter_2 = asyncio.ensure_future(mb.submit_job(Job(2, 2)))
        await asyncio.sleep(0.05)
        first.add_done_callback(lambda _: waiter_1.cancel())  # woken and cancelled in one go
        gate.set()
        await first
        second = await asyncio.wait_for(waiter_2, 5)
        assert await second == 2
        await mb.shutdown()

    vrun(main())


def test_an_async_handler_awaiting_shutdown_does_not_deadlock_it() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, ident, batch_size=1, batch_interval=0.01)

        async def stop(batch: Batch, results: list[Any]) -> None:
            await mb.shutdown()

        mb.on("batch_completed", stop)
        assert await mb.submit_job_nowait(Job(1, 1)) == 1
        for _ in range(100):
            await asyncio.sleep(0.01)
        assert mb.state is State.CLOSED

    vrun(main())


def test_a_hanging_async_handler_does_not_outlast_the_shutdown_timeout() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        mb = AsyncMicroBatching(None, ident, batch_size=1, batch_interval=0.01)

        async def hangs(batch: Batch, results: list[Any]) -> None:
            await asyncio.sleep(3600)

        mb.on("batch_completed", hangs)
        await mb.submit_job_nowait(Job(1, 1))
        start = loop.time()
        await mb.shutdown(timeout=2)
        assert loop.time() - start <= 2

    vrun(main())


def test_a_queue_delivering_late_from_its_thread_gets_no_exception() -> None:
    queue = CopyingQueue()
    mb = MicroBatching(queue, ident)
    mb.start()
    mb.shutdown()
    errors: list[BaseException] = []

    def late() -> None:
        try:
            assert queue.callback is not None
            queue.callback(Job("late", 1))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=late)
    thread.start()
    thread.join(5)
    assert errors == []


def test_batch_timeout_covers_a_coroutine_returned_by_a_plain_callable() -> None:
    async def slow(jobs: list[Job[int]]) -> list[int]:
        await asyncio.sleep(3600)
        return []

    mb = MicroBatching(None, lambda jobs: slow(jobs), batch_size=1, batch_timeout=0.1, retry=None)
    with mb, pytest.raises(JobFailedError, match="batch_timeout"):
        mb.submit_job(Job(1, 1)).result(timeout=5)


def test_no_empty_batch_is_dispatched_while_draining_with_batch_size_one() -> None:
    async def main() -> None:
        async def fails_first(jobs: list[Job[int]]) -> list[Any]:
            return [ValueError("again") if job.attempts == 1 else job.data for job in jobs]

        mb = AsyncMicroBatching(
            None, fails_first, batch_size=1, batch_interval=0.01, retry=RetryPolicy(base_delay=0.05, jitter=0)
        )
        sizes: list[int] = []
        mb.on("batch_started", lambda batch: sizes.append(len(batch)))
        future = mb.submit_job_nowait(Job(1, 1))
        await asyncio.sleep(0.02)  # the first attempt failed: the job waits to retry
        await mb.shutdown()
        assert future.result() == 1
        assert sizes == [1, 1] and mb.stats().batches == 2

    vrun(main())


def test_batch_events_list_only_the_jobs_that_ran() -> None:
    async def main() -> None:
        async def times_ten(jobs: list[Job[int]]) -> list[int]:
            return [job.data * 10 for job in jobs]

        mb = AsyncMicroBatching(None, times_ten, batch_size=3, batch_interval=0.05)
        seen: list[tuple[list[int], list[int]]] = []
        mb.on(
            "batch_completed",
            lambda batch, results: seen.append(([j.data for j in batch.jobs], list(results))),
        )
        futures = [mb.submit_job_nowait(Job(i, i)) for i in (1, 2)]
        futures[0].cancel()
        mb.submit_job_nowait(Job(3, 3))
        await asyncio.sleep(0.1)
        await mb.shutdown()
        assert seen == [([2, 3], [20, 30])]

    vrun(main())


def test_once_leaves_an_on_registration_of_the_same_function_alone() -> None:
    emitter = EventEmitter()
    calls: list[int] = []

    def handler(job: Any) -> None:
        calls.append(job)

    emitter.on("job_added", handler)
    emitter.once("job_added", handler)
    emitter.emit("job_added", 1)
    emitter.emit("job_added", 2)
    assert calls == [1, 1, 2]
    assert emitter.listeners("job_added") == [handler]


def test_shutdown_from_a_handler_is_refused_and_leaves_the_batcher_running() -> None:
    mb = MicroBatching(None, ident, batch_size=1)
    refused: list[BaseException] = []

    def stop(job: Job[Any], result: Any) -> None:
        try:
            mb.shutdown()
        except RuntimeError as exc:
            refused.append(exc)

    mb.on("job_completed", stop)
    assert mb.submit_job(Job(1, 1)).result(5) == 1
    time.sleep(0.05)
    assert mb.state is State.RUNNING and len(refused) == 1
    assert mb.submit_job(Job(2, 2)).result(5) == 2
    mb.shutdown()


def test_shutdown_from_inside_the_processor_is_refused_not_deadlocked() -> None:
    refused: list[BaseException] = []

    def stop_inside(jobs: list[Job[Any]]) -> list[Any]:
        try:
            mb.shutdown()
        except RuntimeError as exc:
            refused.append(exc)
        return ident(jobs)

    mb = MicroBatching(None, stop_inside, batch_size=1)
    assert mb.submit_job(Job(1, 1)).result(5) == 1
    mb.shutdown()
    assert len(refused) == 1 and "would wait for itself" in str(refused[0])

    async def main() -> None:
        async def stop_inside_async(jobs: list[Job[Any]]) -> list[Any]:
            with pytest.raises(RuntimeError, match="inside the processor"):
                await amb.shutdown()
            return ident(jobs)

        amb = AsyncMicroBatching(None, stop_inside_async, batch_size=1)
        assert await amb.submit_job_nowait(Job(1, 1)) == 1
        await amb.shutdown()

    vrun(main())
