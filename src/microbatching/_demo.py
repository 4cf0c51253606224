"""``microbatching demo``: a live run on the in-memory queue, printed batch by batch."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from ._async import AsyncMicroBatching
from ._batch import Batch
from ._engine.processor import plural
from ._job import Job
from ._retry import RetryPolicy

BATCH_SIZE = 8
BATCH_INTERVAL = 0.05


class FlakyBulkApi:
    """Stands in for a bulk HTTP API: 20 ms a call, one job that fails once, one that always fails."""

    def __init__(self, flaky_id: int, broken_id: int) -> None:
        self.flaky_id, self.broken_id = flaky_id, broken_id
        self.flaked = False

    async def process_batch(self, jobs: list[Job[str]]) -> list[Any]:
        await asyncio.sleep(0.02)
        return [self._one(job) for job in jobs]

    def _one(self, job: Job[str]) -> Any:
        if job.id == self.flaky_id and not self.flaked:
            self.flaked = True
            return ConnectionError("503 from the API (transient)")
        if job.id == self.broken_id:
            return ValueError("the API rejects this record")
        return job.data.upper()


def run_demo(jobs: int = 60, seed: int = 7) -> int:
    """Submit ``jobs`` jobs in bursts and trickles, print each batch, then a summary."""
    return asyncio.run(_demo(jobs, random.Random(seed)))


async def _demo(count: int, rng: random.Random) -> int:
    # One job meets a transient error (retried), one a permanent one (fails for good at once:
    # retry_on names the errors worth another attempt).
    api = FlakyBulkApi(flaky_id=max(1, count // 4), broken_id=count // 2 + 1 if count >= 3 else 0)
    retry = RetryPolicy(max_attempts=3, base_delay=0.05, jitter=0.0, retry_on=(ConnectionError,))
    mb = AsyncMicroBatching(None, api, batch_size=BATCH_SIZE, batch_interval=BATCH_INTERVAL, retry=retry)
    print(
        f"microbatching demo: {count} jobs, batch_size={BATCH_SIZE}, "
        f"batch_interval={BATCH_INTERVAL * 1000:.0f} ms, "
        f"connection errors retried up to {retry.max_attempts} attempts\n"
    )
    _print_batches(mb)
    mb.on(
        "job_retrying",
        lambda job, error, delay: print(
            f"      job {job.id}: {error} -> retry in {delay * 1000:.0f} ms (attempt {job.attempts + 1})"
        ),
    )
    mb.on(
        "job_failed",
        lambda job, error: print(
            f"      job {job.id}: failed for good after {plural(error.attempts, 'attempt')}: {error.cause}"
        ),
    )
    mb.on(
        "shutdown_started", lambda: print("   -- shutdown: flushing the partial batch, waiting for retries")
    )
    started = time.perf_counter()
    futures = []
    last_burst = min(count, 3)
    async with mb:
        for number in range(1, count - last_burst + 1):
            futures.append(mb.submit_job_nowait(Job(number, f"record-{number}")))
            await asyncio.sleep(_gap(number, rng))
        await asyncio.sleep(2 * BATCH_INTERVAL)  # let the open batch leave on its own
        # The last jobs arrive just before shutdown: their partial batch leaves at once.
        last = range(count - last_burst + 1, count + 1)
        futures.extend(mb.submit_job_nowait(Job(number, f"record-{number}")) for number in last)
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    _print_summary(mb, outcomes, time.perf_counter() - started)
    return 0


def _gap(number: int, rng: random.Random) -> float:
    """Bursts (size trigger) alternate with trickles (time trigger)."""
    return 0.0005 if (number // 16) % 2 == 0 else rng.uniform(0.005, 0.03)


def _print_batches(mb: AsyncMicroBatching) -> None:
    def completed(batch: Batch, results: list[Any]) -> None:
        started = batch.started_at or batch.opened_at
        failed = sum(isinstance(result, Exception) for result in results)
        waited = (started - batch.opened_at) * 1000
        ran = (time.monotonic() - started) * 1000
        ids = [job.id for job in batch.jobs if job.attempts == 1]
        again = "".join(f" +{job.id} (attempt {job.attempts})" for job in batch.jobs if job.attempts > 1)
        span = "" if not ids else f"job {ids[0]}" if len(ids) == 1 else f"jobs {ids[0]}..{ids[-1]}"
        print(
            f"batch {batch.id:>3}  {plural(len(batch), 'job'):>7}  trigger {batch.trigger:<8} "
            f"first job waited {waited:5.1f} ms  ran {ran:5.1f} ms  "
            f"ok {len(results) - failed}{f'  failed {failed}' if failed else ''}   {span}{again}"
        )

    mb.on("batch_completed", completed)


def _print_summary(mb: AsyncMicroBatching, outcomes: list[Any], elapsed: float) -> None:
    stats = mb.stats()
    triggers = ", ".join(f"{name} {n}" for name, n in stats.batches_by_trigger.items() if n)
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    print(
        f"\nsummary after graceful shutdown ({elapsed:.2f} s):\n"
        f"  {stats.submitted} jobs submitted, {stats.completed} completed, {stats.failed} failed, "
        f"{stats.retried} {'retry' if stats.retried == 1 else 'retries'}, {stats.pending} pending\n"
        f"  {stats.batches} batches ({triggers}), mean size {stats.batch_size.mean:.1f}\n"
        f"  every handle settled: {plural(len(outcomes) - len(errors), 'result')}, "
        f"{plural(len(errors), 'error')}"
    )
