"""Hostile cases for the durable SQLite queue: rows it cannot decode, jobs whose leases ran out."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from microbatching import AsyncMicroBatching, Job, RetryPolicy
from microbatching.errors import QueueError
from microbatching.queues import SQLiteQueue

# Every wait below is bounded well within this; it only stops a test the bounds missed.
pytestmark = pytest.mark.timeout(30)

RECORD = """
def record(jobs):
    with open("processed.txt", "a") as f:
        f.write("".join(f"{job.data}\\n" for job in jobs))
    return [job.data for job in jobs]
"""

_DECODE_ERROR = re.compile(r"decod|json|expecting", re.IGNORECASE)


async def _enqueue(path: Path, jobs: list[Job[Any]]) -> None:
    queue = SQLiteQueue(path)
    try:
        await queue.enqueue([queue.encode(job) for job in jobs])
    finally:
        await queue.close()


def _summary(dead: list[Any]) -> str:
    """``3 dead letters: {'error text': count, ...}``."""
    errors: dict[str, int] = {}
    for letter in dead:
        errors[letter.error] = errors.get(letter.error, 0) + 1
    return f"{len(dead)} dead letters: {errors}"


async def _dead_letters(path: Path) -> list[Any]:
    queue = SQLiteQueue(path)
    try:
        return await queue.dead_letters()
    finally:
        await queue.close()


def _insert_undecodable_row(path: Path) -> None:
    """A row whose payload is not JSON, written behind the queue's back (the schema of queues/sqlite.py)."""
    conn = sqlite3.connect(path)
    try:
        old = time.time() - 60  # the oldest ready job: it is in the first claim
        conn.execute(
            "INSERT INTO mb_jobs (key, job_id, payload, available_at, enqueued_at) VALUES (?, ?, ?, ?, ?)",
            ("undecodable-row", b'"bad"', b"{not json", old, old),
        )
        conn.commit()
    finally:
        conn.close()


def test_an_undecodable_row_is_dead_lettered_alone_and_the_worker_processes_the_healthy_jobs(
    tmp_path: Path,
) -> None:
    (tmp_path / "procs.py").write_text(RECORD)
    path = tmp_path / "q.db"
    asyncio.run(_enqueue(path, [Job(f"h{i}", i) for i in range(10)]))
    _insert_undecodable_row(path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "microbatching", "worker", "procs:record", "--queue", "sqlite:///q.db",
             "--until-empty", "--lease", "1", "--batch-interval", "0.01"],
            cwd=tmp_path, capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not finish the queue within 20 s")
    record = tmp_path / "processed.txt"
    processed = sorted(int(line) for line in record.read_text().split()) if record.exists() else []
    dead = asyncio.run(_dead_letters(path))
    assert processed == list(range(10)), (
        f"the healthy jobs behind an undecodable row: processed {processed}; {_summary(dead)}; "
        f"worker exit {done.returncode}"
    )
    assert [d.key for d in dead] == ["undecodable-row"], [(d.key, d.error) for d in dead]
    assert _DECODE_ERROR.search(dead[0].error), dead[0].error


def test_an_undecodable_row_is_dead_lettered_alone_and_a_batcher_processes_the_healthy_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    asyncio.run(_enqueue(path, [Job(f"h{i}", i) for i in range(10)]))
    _insert_undecodable_row(path)
    processed: list[Any] = []
    all_done = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def record(jobs: list[Job[Any]]) -> list[Any]:
            processed.extend(job.data for job in jobs)
            if len(processed) >= 10:
                loop.call_soon_threadsafe(all_done.set)
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(
            SQLiteQueue(path, lease=1),
            record,
            batch_interval=0.01,
            retry=RetryPolicy(max_attempts=3, base_delay=0.01),
        )
        mb.start()
        try:
            await asyncio.wait_for(all_done.wait(), 5)
        except asyncio.TimeoutError:
            pass  # the assertions below say what is missing
        finally:
            await asyncio.wait_for(mb.shutdown(timeout=2), 10)

    asyncio.run(main())
    dead = asyncio.run(_dead_letters(path))
    assert sorted(processed) == list(range(10)), (
        f"the healthy jobs behind an undecodable row: processed {sorted(processed)} within 5 s; "
        f"{_summary(dead)}"
    )
    deadline = time.monotonic() + 5
    while not dead and time.monotonic() < deadline:  # the dead letter may be written last
        time.sleep(0.1)
        dead = asyncio.run(_dead_letters(path))
    assert [d.key for d in dead] == ["undecodable-row"], [(d.key, d.error) for d in dead]
    assert _DECODE_ERROR.search(dead[0].error), dead[0].error


def test_a_job_whose_lease_expired_twice_runs_alone_and_is_not_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "q.db"

    async def make_suspect() -> None:
        queue = SQLiteQueue(path, lease=0.2)
        try:
            await queue.enqueue([queue.encode(Job("suspect", "S"))])
            for _ in range(2):  # claimed twice, never settled: a consumer died with it twice
                claimed = await queue.claim(10, 0.2, 3)
                assert [job.id for job in claimed] == ["suspect"]
                await asyncio.sleep(0.3)
            await queue.enqueue([queue.encode(Job(f"o{i}", i)) for i in range(3)])
        finally:
            await queue.close()

    asyncio.run(make_suspect())
    batches: list[list[Any]] = []
    all_done = asyncio.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def record(jobs: list[Job[Any]]) -> list[Any]:
            batches.append([job.id for job in jobs])
            if sum(map(len, batches)) >= 4:
                loop.call_soon_threadsafe(all_done.set)
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(
            SQLiteQueue(path),
            record,
            batch_size=10,
            batch_interval=0.01,
            retry=RetryPolicy(max_attempts=3, base_delay=0.01),
        )
        mb.start()
        try:
            await asyncio.wait_for(all_done.wait(), 5)
        except asyncio.TimeoutError:
            pass  # the assertions below say what is missing
        finally:
            await asyncio.wait_for(mb.shutdown(timeout=2), 10)

    asyncio.run(main())
    dead = asyncio.run(_dead_letters(path))
    assert dead == [], [(d.key, json.dumps(d.job_id), d.error) for d in dead]
    assert ["suspect"] in batches, f"the suspect job never ran alone: batches {batches}"
    assert sum(batch.count("suspect") for batch in batches) == 1, batches


_PRODUCER = """
import os, sys
from microbatching import Job, MicroBatching
from microbatching.queues import SQLiteQueue

queue = SQLiteQueue(sys.argv[1])
queue.max_unstored = int(sys.argv[2])
mb = MicroBatching(queue, lambda jobs: [None] * len(jobs))
options = {"wait_stored": True} if sys.argv[4] == "stored" else {}
for i in range(int(sys.argv[3])):
    mb.submit_job(Job(i, {"n": i}), **options)
os.write(1, b"returned\\n")
os.read(0, 1)  # killed while waiting here, never shut down
"""


def _stored_ever(path: Path) -> int:
    """Jobs in the queue now plus those processed and acknowledged from it."""
    conn = sqlite3.connect(path)
    try:
        (queued,) = conn.execute("SELECT COUNT(*) FROM mb_jobs").fetchone()
        (done,) = conn.execute("SELECT CAST(value AS INTEGER) FROM mb_meta WHERE name = 'done'").fetchone()
    finally:
        conn.close()
    return int(queued) + int(done)


@pytest.mark.parametrize("mode", ["bounded", "stored"])
def test_a_producer_killed_after_its_submits_returned_loses_at_most_the_unstored_bound(
    tmp_path: Path, mode: str
) -> None:
    path, bound = tmp_path / "q.db", 200
    submits = 2_000 if mode == "stored" else 20_000  # a stored submit waits for its write
    producer = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, str(path), str(bound), str(submits), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert producer.stdout is not None
    line = producer.stdout.readline()  # every submit has returned
    producer.kill()
    _, err = producer.communicate(timeout=10)
    assert line == b"returned\n", err.decode()[-2000:]
    stored = _stored_ever(path)
    lost = submits - stored
    limit = 0 if mode == "stored" else bound
    assert lost <= limit, f"{lost} of {submits} accepted jobs were never stored (at most {limit} may be)"


FAULTS = Path(__file__).parent / "fault"


def _effects(directory: Path) -> list[tuple[int, int]]:
    rows = []
    for path in directory.glob("effects-*.log"):
        for line in path.read_text().splitlines():
            job_id, attempts, _ = line.split()
            rows.append((int(job_id), int(attempts)))
    return rows


def _fault_worker(path: Path, logs: Path, *options: str, **env: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "microbatching", "worker", "fault_processors:record", "--queue",
               str(path), "--batch-size", "10", "--batch-interval", "0.01", "--lease", "1",
               "--max-attempts", "3", "--quiet", *options]  # fmt: skip
    environ = {**os.environ, "PYTHONPATH": str(FAULTS), "FAULT_LOG_DIR": str(logs), **env}
    return subprocess.Popen(command, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.timeout(60)
def test_a_suspect_claimed_by_a_busy_worker_that_then_dies_still_gets_its_run_alone(tmp_path: Path) -> None:
    # A job whose leases ran out twice (its worker died with it twice) reaches a busy worker,
    # which dies before it could run the job alone.  The job must not be charged that claim's
    # attempt: the next worker runs it, and it is not buried as having killed its worker.
    path, suspect = tmp_path / "q.db", 999
    asyncio.run(_enqueue(path, [Job(i, i) for i in range(25)]))

    async def make_suspect() -> None:
        queue = SQLiteQueue(path)
        try:
            await queue.enqueue([queue.encode(Job(suspect, suspect))])
            for _ in range(2):  # claimed and abandoned twice: recovered == 2, attempts == 2
                await asyncio.sleep(0.25)
                claimed = await queue.claim(30, 0.2)
                await queue.release([job for job in claimed if job.id != suspect])
        finally:
            await queue.close()

    asyncio.run(make_suspect())
    time.sleep(0.25)  # its last lease ran out
    # Each batch takes 2 s: the kill below lands while the second batch runs, long before
    # the worker could start the suspect's run alone, even when this process is starved.
    busy = _fault_worker(path, tmp_path, FAULT_SLEEP="2")
    deadline = time.monotonic() + 20
    while (
        len(_effects(tmp_path)) < 20 and time.monotonic() < deadline
    ):  # two batches ran: it claimed the suspect
        time.sleep(0.01)
    busy.kill()
    busy.communicate(timeout=10)
    time.sleep(1.2)  # every lease of the dead worker ran out
    final = _fault_worker(path, tmp_path, "--until-empty")
    _, err = final.communicate(timeout=30)
    assert final.returncode == 0, err.decode()[-2000:]

    async def outcome() -> Any:
        queue = SQLiteQueue(path)
        try:
            return await queue.dead_letters(), await queue.stats()
        finally:
            await queue.close()

    dead, stats = asyncio.run(outcome())
    runs = [attempts for job_id, attempts in _effects(tmp_path) if job_id == suspect]
    assert [d.job_id for d in dead] == [], f"dead-lettered without running alone: {[d.error for d in dead]}"
    assert runs, "the suspect never ran"
    assert (stats.pending, stats.in_flight) == (0, 0)


class _FlakyClaims(SQLiteQueue):
    """A SQLite queue whose first ``failures`` claims fail, as a broker that is down would.

    ``error`` is what the client raises; ``asyncio.CancelledError`` is what aiormq raises
    in the calls of a connection it gave up on (the broker stopped answering).
    """

    def __init__(self, path: Path, failures: int, error: type[BaseException] = ConnectionError) -> None:
        super().__init__(path)
        self.failures, self.error = failures, error

    async def _claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise self.error("connection refused")
        return await super()._claim(*args, **kwargs)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="before Python 3.11 a task cannot tell a "
                    "cancellation of its own from a client's, and takes every one as its own")
def test_a_client_cancelling_its_own_call_is_a_queue_error_and_the_claim_loop_goes_on(tmp_path: Path) -> None:
    async def main() -> list[Any]:
        queue = _FlakyClaims(tmp_path / "q.db", failures=1, error=asyncio.CancelledError)
        with pytest.raises(QueueError, match="the client abandoned the operation"):
            await queue.claim(1)
        queue.failures = 3
        async with AsyncMicroBatching(queue, lambda jobs: [job.data for job in jobs]) as mb:
            return list(await asyncio.gather(*(mb.submit_job_nowait(Job(i, i)) for i in range(3))))

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [0, 1, 2]


def test_a_claim_that_keeps_failing_is_logged_once_with_its_traceback_then_once_it_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import microbatching.adapters.claim as claim

    monkeypatch.setattr(claim, "_ERROR_BACKOFF", 0.01)
    caplog.set_level("WARNING", logger="microbatching")

    async def main() -> list[Any]:
        queue = _FlakyClaims(tmp_path / "q.db", failures=20)
        async with AsyncMicroBatching(queue, lambda jobs: [job.data for job in jobs]) as mb:
            return list(await asyncio.gather(*(mb.submit_job_nowait(Job(i, i)) for i in range(3))))

    assert asyncio.run(asyncio.wait_for(main(), 30)) == [0, 1, 2]
    claims = [r for r in caplog.records if "claiming jobs from" in r.getMessage()]
    assert [r.levelname for r in claims] == ["ERROR", "WARNING"], [r.getMessage() for r in claims]
    assert claims[0].exc_info is not None and "connection refused" in str(claims[0].exc_info[1])
    assert "works again after 20 failed tries" in claims[1].getMessage()
