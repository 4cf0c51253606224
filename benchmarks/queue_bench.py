"""Shared pieces of the broker-queue benchmarks: the library end to end, and worker scaling.

A broker's own module (``bench_<name>.py``) adds its raw-client loop and the job system
users would pick on that broker, and calls these for the library's side, so every queue is
measured the same way.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness import Comparison, Metrics

from microbatching import AsyncMicroBatching, Job
from microbatching.queues import open_queue

__all__ = ["BATCH_SIZE", "INTERVAL", "drop", "enqueue", "ours_end_to_end", "worker_scaling"]

BATCH_SIZE = 100
INTERVAL = 0.005
HERE = Path(__file__).parent


def reachable(url: str, default_port: int) -> bool:
    """Whether the broker of ``url`` accepts a connection (its benchmark says so and skips if not)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def ours_end_to_end(url: str, n: int) -> Metrics:
    """Jobs/s of ``n`` jobs submitted through ``AsyncMicroBatching`` on the queue and processed by it."""

    async def main() -> float:
        async def process(jobs: list[Job[int]]) -> list[int]:
            return [job.data * 2 for job in jobs]

        batcher = AsyncMicroBatching(
            open_queue(url), process, batch_size=BATCH_SIZE, batch_interval=INTERVAL, retry=None
        )
        batcher.start()
        start = time.perf_counter()
        futures = [batcher.submit_job_nowait(Job(None, x)) for x in range(n)]
        ok = 0
        for x, future in enumerate(futures):
            ok += await future == x * 2
        elapsed = time.perf_counter() - start
        await batcher.shutdown()
        if ok != n:
            raise AssertionError(f"{url.partition(':')[0]}: {ok} of {n} results were correct")
        return elapsed

    try:
        return {"jobs_per_s": n / asyncio.run(main())}
    finally:
        drop(url)


def enqueue(url: str, n: int) -> None:
    """Put ``n`` jobs (data 0..n-1) on the queue, in bulk."""

    async def main() -> None:
        queue = open_queue(url)
        try:
            messages = [queue.encode(Job(None, x)) for x in range(n)]
            for start in range(0, n, 1000):
                await queue.enqueue(messages[start : start + 1000])
        finally:
            await queue.close()

    asyncio.run(main())


def drop(url: str) -> None:
    """Delete the queue and everything it created."""

    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.drop()
        finally:
            await queue.close()

    asyncio.run(main())


def worker_scaling(name: str, url_for: Any, n: int, counts: tuple[int, ...] = (1, 2, 4)) -> Comparison:
    """Jobs/s of 1, 2 and 4 worker processes (the real CLI) draining ``n`` jobs from one queue.

    ``url_for(label)`` gives a fresh queue URL per run.  The time runs from starting the
    workers to the last one exiting (``--until-empty``), start-up included.
    """
    comparison = Comparison(f"{name}: {n:,} jobs, worker processes on one queue", "1 worker")
    for count in counts:
        label = "1 worker" if count == 1 else f"{count} workers"
        url = url_for(f"scale{count}")
        enqueue(url, n)
        try:
            comparison.runs[label] = [_drain_with_workers(url, count, n)]
        finally:
            drop(url)
    comparison.notes.append(
        f"each worker: microbatching worker --batch-size {BATCH_SIZE} --concurrency 2 --until-empty, "
        "a trivial def processor; ratio = jobs/s over one worker's"
    )
    return comparison


def _drain_with_workers(url: str, count: int, n: int) -> Metrics:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "microbatching", "worker", "bench_processors:double", "--queue", url,
               "--batch-size", str(BATCH_SIZE), "--batch-interval", str(INTERVAL), "--concurrency", "2",
               "--until-empty", "--quiet"]  # fmt: skip
    start = time.perf_counter()
    workers = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE) for _ in range(count)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise AssertionError(f"a worker exited {worker.returncode}: {err.decode()[-2000:]}")
    return {"jobs_per_s": n / (time.perf_counter() - start)}
