"""The original design's interfaces: a queue with only add/process, a processor with only process_batch."""

from __future__ import annotations

import asyncio
import copy
import queue as std_queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import vrun

from microbatching import (
    AsyncMicroBatching,
    BatchProcessorInterface,
    Job,
    JobCancelledError,
    JobFailedError,
    MemoryQueue,
    MicroBatching,
    QueueInterface,
    RetryPolicy,
)


class ListQueue:
    """Only add and process, no base class: delivers on the caller's thread."""

    def __init__(self) -> None:
        self.added: list[Any] = []
        self.callback: Callable[[Job[Any]], Any] | None = None

    def add(self, job: Job[Any]) -> None:
        self.added.append(job.id)
        assert self.callback is not None
        self.callback(job)

    def process(self, callback: Callable[[Job[Any]], Any]) -> None:
        self.callback = callback


class ThreadedCopyingQueue(QueueInterface):
    """Delivers deep copies of jobs from its own consumer thread, as a serializing broker would."""

    def __init__(self) -> None:
        self._items: std_queue.Queue[Job[Any] | None] = std_queue.Queue()
        self._thread: threading.Thread | None = None

    def add(self, job: Job[Any]) -> None:
        self._items.put(copy.copy(job))

    def process(self, callback: Callable[[Job[Any]], Any]) -> None:
        def consume() -> None:
            while (job := self._items.get()) is not None:
                callback(job)

        self._thread = threading.Thread(target=consume, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._items.put(None)


class Uppercase(BatchProcessorInterface):
    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def process_batch(self, jobs: list[Job[Any]]) -> list[Any]:
        self.batches.append([job.id for job in jobs])
        return [str(job.data).upper() for job in jobs]


def test_node_style_usage_with_user_queue_and_processor_classes() -> None:
    queue = ListQueue()
    processor = Uppercase()
    added: list[Any] = []
    mb = MicroBatching(queue, processor, batch_size=10, batch_interval=0.05)
    mb.on("job_added", lambda job: added.append(f"Job {job.id} added to the queue"))
    mb.start()
    handles = [mb.submit_job(Job(i, f"data for job {i}")) for i in range(1, 4)]
    assert [h.result(timeout=5) for h in handles] == [f"DATA FOR JOB {i}" for i in range(1, 4)]
    mb.shutdown()
    assert queue.added == [1, 2, 3]
    assert added == ["Job 1 added to the queue", "Job 2 added to the queue", "Job 3 added to the queue"]
    assert processor.batches == [[1, 2, 3]]


def test_queue_delivering_copies_from_another_thread_reaches_the_submitters() -> None:
    with MicroBatching(ThreadedCopyingQueue(), Uppercase(), batch_size=50, batch_interval=0.01) as mb:
        handles = [mb.submit_job(Job(i, f"x{i}")) for i in range(200)]
        assert [h.result(timeout=5) for h in handles] == [f"X{i}" for i in range(200)]


def test_retries_go_back_through_the_user_queue() -> None:
    queue = ListQueue()
    attempts: list[int] = []

    def flaky(jobs: list[Job[Any]]) -> list[Any]:
        attempts.extend(job.attempts for job in jobs)
        return [OSError("again") if job.attempts == 1 else "ok" for job in jobs]

    policy = RetryPolicy(max_attempts=2, base_delay=0.01, jitter=0)
    with MicroBatching(queue, flaky, batch_size=1, batch_interval=0.01, retry=policy) as mb:
        assert mb.submit_job(Job("a", 1)).result(timeout=5) == "ok"
    assert queue.added == ["a", "a"]
    assert attempts == [1, 2]


def test_async_queue_methods_are_awaited() -> None:
    class AsyncQueue:
        def __init__(self) -> None:
            self.callback: Callable[[Job[Any]], Any] | None = None

        async def add(self, job: Job[Any]) -> None:
            await asyncio.sleep(0.01)
            assert self.callback is not None
            self.callback(job)

        def process(self, callback: Callable[[Job[Any]], Any]) -> None:
            self.callback = callback

    async def main() -> None:
        async def echo(jobs: list[Job[int]]) -> list[int]:
            return [job.data for job in jobs]

        async with AsyncMicroBatching(AsyncQueue(), echo, batch_size=3, batch_interval=0.01) as mb:
            futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3)]
            assert await asyncio.gather(*futures) == [0, 1, 2]

    vrun(main())


def test_queue_whose_add_fails_fails_the_job_instead_of_hanging() -> None:
    class Broken:
        def add(self, job: Job[Any]) -> None:
            raise ConnectionError("queue is down")

        def process(self, callback: Callable[[Job[Any]], Any]) -> None:
            pass

    with MicroBatching(Broken(), Uppercase()) as mb:
        handle = mb.submit_job(Job(1, "x"))
        with pytest.raises(JobFailedError, match="queue is down"):
            handle.result(timeout=5)


def test_jobs_a_queue_never_delivers_fail_at_shutdown_timeout() -> None:
    class BlackHole:
        def add(self, job: Job[Any]) -> None:
            pass

        def process(self, callback: Callable[[Job[Any]], Any]) -> None:
            pass

    mb = MicroBatching(BlackHole(), Uppercase())
    handle = mb.submit_job(Job(1, "x"))
    mb.shutdown(timeout=0.2)
    with pytest.raises(JobCancelledError):
        handle.result(timeout=0)


def test_jobs_from_elsewhere_are_processed_and_counted() -> None:
    queue = ListQueue()
    processor = Uppercase()
    with MicroBatching(queue, processor, batch_size=2, batch_interval=0.01) as mb:
        mb.submit_job(Job("mine", "a"))
        assert queue.callback is not None
        mb._loop.call_soon_threadsafe(queue.callback, Job("theirs", "b"))  # delivered, never submitted here
    assert sorted(id_ for batch in processor.batches for id_ in batch) == ["mine", "theirs"]
    assert mb.stats().completed == 2


def test_bad_queue_is_refused_naming_the_missing_methods() -> None:
    class NoProcess:
        def add(self, job: Job[Any]) -> None:
            pass

    with pytest.raises(TypeError, match="NoProcess lacks process"):
        MicroBatching(NoProcess(), Uppercase())


def test_memory_queue_works_standalone_like_the_seed_queue() -> None:
    queue = MemoryQueue()
    queue.add(Job(1, "held"))
    assert len(queue) == 1
    seen: list[Any] = []
    queue.process(lambda job: seen.append(job.data))
    queue.add(Job(2, "live"))
    assert seen == ["held", "live"]
    assert len(queue) == 0


def test_explicit_memory_queue_is_the_default() -> None:
    with MicroBatching(MemoryQueue(), Uppercase(), batch_size=1) as mb:
        assert mb.submit_job(Job(1, "a")).result(5) == "A"
