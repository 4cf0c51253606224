"""A durable pipeline in one file: enqueue jobs into SQLite, then process them in batches.

    python examples/durable_worker.py            # enqueue 200 jobs, process them, show stats

The same processor runs as a worker process with
``microbatching worker durable_worker:send_batch --queue sqlite:///durable-example.db``
(from the examples directory).
"""

from __future__ import annotations

import asyncio
from typing import Any

from microbatching import AsyncMicroBatching, Job, RetryPolicy
from microbatching.queues import SQLiteQueue

URL = "sqlite:///durable-example.db"


def send_batch(jobs: list[Job[Any]]) -> list[Any]:
    """Stands in for a bulk API call; every 50th record is rejected for good."""
    return [ValueError("rejected by the API") if job.data["n"] % 50 == 0 else f"sent {job.data['n']}"
            for job in jobs]


async def main() -> None:
    retry = RetryPolicy(max_attempts=2, base_delay=0.05)
    mb = AsyncMicroBatching(SQLiteQueue(URL), send_batch, batch_size=25, batch_interval=0.1, retry=retry)
    async with mb:
        futures = [mb.submit_job_nowait(Job(f"record-{n}", {"n": n})) for n in range(1, 201)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, Exception)]
    print(f"{len(outcomes) - len(failed)} sent, {len(failed)} dead-lettered")
    queue = SQLiteQueue(URL)
    print(await queue.stats())
    for dead in await queue.dead_letters(3):
        print(f"  dead: {dead.job_id} after {dead.attempts} attempts: {dead.error}")
    await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
