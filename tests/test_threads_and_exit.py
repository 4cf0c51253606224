"""Thread safety of the sync facade, jobs and handles, and the exit hook that loses nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from microbatching import Job, JobResult, MicroBatching, Stats


def test_many_threads_submitting_at_once_all_get_their_own_results() -> None:
    batch_sizes: list[int] = []

    def process(jobs: list[Job[tuple[int, int]]]) -> list[str]:
        batch_sizes.append(len(jobs))
        return [f"{t}:{i}" for t, i in (job.data for job in jobs)]

    threads_count, per_thread = 16, 500
    barrier = threading.Barrier(threads_count)
    failures: list[str] = []
    with MicroBatching(None, process, batch_size=64, batch_interval=0.005, max_concurrent_batches=2) as mb:

        def worker(t: int) -> None:
            barrier.wait()
            handles = [mb.submit_job(Job(None, (t, i))) for i in range(per_thread)]
            for i, handle in enumerate(handles):
                if handle.result(timeout=30) != f"{t}:{i}":
                    failures.append(f"thread {t} job {i}")

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert failures == []
    assert sum(batch_sizes) == threads_count * per_thread
    assert max(batch_sizes) <= 64
    stats = mb.stats()
    assert (stats.submitted, stats.completed, stats.pending) == (8000, 8000, 0)


def test_sync_processor_does_not_stall_the_timers() -> None:
    """A slow sync processor runs in a worker thread; the time trigger of the next batch still fires."""
    gate = threading.Event()
    started: list[float] = []

    def slow(jobs: list[Job[int]]) -> list[int]:
        if jobs[0].data == 0:
            gate.wait(5)
        return [job.data for job in jobs]

    with MicroBatching(None, slow, batch_size=100, batch_interval=0.02, max_concurrent_batches=2) as mb:
        mb.on("batch_started", lambda batch: started.append(batch.started_at))
        blocked = mb.submit_job(Job(0, 0))
        import time

        time.sleep(0.05)
        assert mb.submit_job(Job(1, 1)).result(timeout=2) == 1  # finished while batch 0 still blocks
        assert not blocked.done()
        gate.set()
        assert blocked.result(timeout=5) == 0


def test_job_ids_are_generated_unique_and_stable() -> None:
    jobs = [Job(data=i) for i in range(1000)]
    ids = {job.id for job in jobs}
    assert len(ids) == 1000
    assert jobs[0].id == jobs[0].id
    assert Job(7, "x").id == 7
    job = Job(1, "payload")
    assert (job.data, job.attempts, job.submitted_at) == ("payload", 0, None)


def test_handle_is_a_concurrent_future_carrying_its_job() -> None:
    with MicroBatching(None, lambda jobs: [j.data for j in jobs], batch_size=1) as mb:
        job = Job("j", 5)
        handle = mb.submit_job(job)
        assert isinstance(handle, JobResult) and isinstance(handle, Future)
        assert handle.result(timeout=5) == 5
        assert handle.exception(timeout=0) is None
        assert handle.done() and handle.job is job
        assert job.submitted_at is not None and job.attempts == 1


def test_submitting_a_job_still_in_progress_is_refused() -> None:
    gate = threading.Event()
    with MicroBatching(None, lambda jobs: [gate.wait(5) for _ in jobs], batch_size=1) as mb:
        job = Job(1, 1)
        mb.submit_job(job)
        with pytest.raises(ValueError, match="already submitted"):
            mb.submit_job(job)
        gate.set()


def test_stats_snapshot_is_frozen() -> None:
    with MicroBatching(None, lambda jobs: [0 for _ in jobs], batch_size=2) as mb:
        for i in range(4):
            mb.submit_job(Job(i, i))
    stats = mb.stats()
    assert isinstance(stats, Stats)
    assert stats.batches == 2 and stats.batches_by_trigger["size"] == 2
    with pytest.raises(AttributeError):
        stats.completed = 0  # type: ignore[misc]


def _run_script(body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True, timeout=60, check=False
    )


def test_exit_without_shutdown_still_processes_every_accepted_job() -> None:
    """Buffered jobs are not lost at interpreter exit (celery-batches #93, confluent-kafka #137)."""
    done = _run_script(
        """
        import time
        from microbatching import MicroBatching, Job

        def process(jobs):
            time.sleep(0.05)
            for job in jobs:
                print("done", job.id, flush=True)
            return [None for _ in jobs]

        mb = MicroBatching(None, process, batch_size=7, batch_interval=9)
        for i in range(20):
            mb.submit_job(Job(i, i))
        print("main ends", flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(int(line.split()[1]) for line in lines if line.startswith("done")) == list(range(20))


def test_async_processor_in_sync_facade_runs_on_the_loop() -> None:
    seen_threads: list[str] = []

    async def process(jobs: list[Job[Any]]) -> list[Any]:
        seen_threads.append(threading.current_thread().name)
        return [job.data for job in jobs]

    with MicroBatching(None, process, batch_size=1) as mb:
        assert mb.submit_job(Job(1, "a")).result(5) == "a"
    assert seen_threads == ["microbatching-loop"]
