"""SQLiteQueue specifics beyond the conformance suite: URLs, files, serializers, indexes."""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from microbatching import Job, MicroBatching
from microbatching.errors import MicroBatchingError
from microbatching.queues import ClaimQueue, SQLiteQueue, WorkerInfo
from microbatching.queues import sqlite as sqlite_module
from microbatching.queues._serialization import JsonSerializer, PayloadTooLargeError, SerializationError


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def stats_of(path: Path) -> Any:
    queue = SQLiteQueue(path)
    try:
        return await queue.stats()
    finally:
        await queue.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///jobs.db", Path("jobs.db")),
        ("sqlite:///data/jobs.db", Path("data/jobs.db")),
        ("sqlite:////var/tmp/jobs.db", Path("/var/tmp/jobs.db")),
        ("plain/path.db", Path("plain/path.db")),
    ],
)
def test_url_forms(url: str, expected: Path) -> None:
    assert SQLiteQueue(url).path == expected


@pytest.mark.parametrize("url", ["redis://localhost/0", "sqlite://jobs.db", "sqlite:///:memory:", ""])
def test_bad_urls_are_refused_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite:///|file path"):
        SQLiteQueue(url)


@pytest.mark.parametrize(
    ("option", "value"),
    [("lease", 0), ("lease", float("inf")), ("max_payload_bytes", 0), ("synchronous", "fast")],
)
def test_bad_options_are_refused(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=option):
        SQLiteQueue("q.db", **{option: value})


def test_the_file_is_in_wal_mode_with_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "q.db"

    async def main() -> None:
        queue = SQLiteQueue(path)
        await queue.enqueue([queue.encode(Job(1, "a"))])
        await queue.close()

    run(main())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"mb_jobs", "mb_dead", "mb_meta"} <= tables
    conn.close()


def test_finding_expired_last_attempts_reads_only_leased_jobs(tmp_path: Path) -> None:
    # Every claim looks for them: a scan of all ready jobs made a 50,000-job drain quadratic.
    path = tmp_path / "q.db"
    run(stats_of(path))
    conn = sqlite3.connect(path)
    exhausted = sqlite_module._EXHAUSTED.format(jobs="mb_jobs")
    rows = conn.execute(f"EXPLAIN QUERY PLAN {exhausted}", (0.0, 1)).fetchall()
    conn.close()
    assert "USING INDEX mb_jobs_leased" in " ".join(row[-1] for row in rows)


def test_claims_and_acks_span_chunks_and_tokens(tmp_path: Path) -> None:
    # Set-based statements: more jobs than one statement binds, from two claims at once.
    async def main() -> tuple[int, int, int, Any]:
        queue = SQLiteQueue(tmp_path / "q.db")
        try:
            await queue.enqueue([queue.encode(Job(i, i)) for i in range(1_300)])
            first = await queue.claim(1_200, 30.0)
            second = await queue.claim(1_200, 30.0)
            fake = Job(0, 0)
            fake.receipt = _with_token(first[0].receipt, "stale")
            stale = await queue.ack([fake])
            done = await queue.ack(first + second)
            return len(first), len(second), stale + done, await queue.stats()
        finally:
            await queue.close()

    first, second, acked, stats = run(main())
    assert (first, second, acked) == (1_200, 100, 1_300)
    assert (stats.pending, stats.in_flight, stats.done) == (0, 0, 1_300)


def _with_token(lease: Any, token: str) -> Any:
    return dataclasses.replace(lease, token=token)


def test_a_file_keeps_its_serializer(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    run(stats_of(path))  # creates it, JSON

    async def main() -> None:
        queue = SQLiteQueue(path, serializer="pickle")
        try:
            await queue.stats()
        finally:
            await queue.close()

    with pytest.raises(MicroBatchingError, match="serializer='json'"):
        run(main())


def test_pickle_on_opt_in_round_trips_python_objects(tmp_path: Path) -> None:
    def process(jobs: list[Job[Any]]) -> list[Any]:
        return [(type(job.data).__name__, sum(job.data)) for job in jobs]

    queue = SQLiteQueue(tmp_path / "q.db", serializer="pickle")
    with MicroBatching(queue, process, batch_interval=0.01) as mb:
        handle = mb.submit_job(Job(("tuple", "id"), {decimal.Decimal("1.5"), decimal.Decimal(2)}))
        assert handle.result(timeout=10) == ("set", decimal.Decimal("3.5"))
        with pytest.raises(SerializationError, match="'lambda'"):
            mb.submit_job(Job("lambda", lambda: None))


def test_json_is_the_default_and_refuses_before_storing(tmp_path: Path) -> None:
    queue = SQLiteQueue(tmp_path / "q.db")
    assert queue.serializer.name == "json"
    with MicroBatching(queue, lambda jobs: [None] * len(jobs)) as mb:
        with pytest.raises(SerializationError, match=r"data of job 'obj' cannot be encoded as json.*pickle"):
            mb.submit_job(Job("obj", {"when": object()}))
        with pytest.raises(SerializationError, match=r"NaN|Out of range"):
            mb.submit_job(Job("nan", float("nan")))
        with pytest.raises(SerializationError, match="job id"):
            mb.submit_job(Job(object(), 1))
        assert mb.stats().submitted == 0
    stats = run(stats_of(tmp_path / "q.db"))
    assert (stats.pending, stats.done) == (0, 0)


def test_json_reads_what_it_wrote_and_other_unicode_encodings() -> None:
    serializer = JsonSerializer()
    value = {"text": "h\u00e9llo \u2603", "n": [1, 2.5, None]}
    assert serializer.dumps(value) == b'{"text":"h\xc3\xa9llo \xe2\x98\x83","n":[1,2.5,null]}'
    assert serializer.loads(serializer.dumps(value)) == value
    assert serializer.loads('["\u00e9"]'.encode("utf-16")) == ["\u00e9"]


def test_payload_limit_is_configurable(tmp_path: Path) -> None:
    small = SQLiteQueue(tmp_path / "q.db", max_payload_bytes=10)
    with pytest.raises(PayloadTooLargeError, match=r"job 7 is 12 bytes encoded, over .*max_payload_bytes=10"):
        small.encode(Job(7, "x" * 10))
    assert small.encode(Job(7, "x" * 8)).payload == b'"xxxxxxxx"'
    unbounded = SQLiteQueue(tmp_path / "q.db", max_payload_bytes=None)
    assert len(unbounded.encode(Job(1, "x" * 5_000_000)).payload) == 5_000_002


def test_the_fast_paths_that_lean_on_cpython_internals_are_in_use_here() -> None:
    # Each checks itself at import and falls back to the public path when this Python differs;
    # this says so loudly, so a Python upgrade that breaks one is noticed, not silently slower.
    from microbatching._job import FUTURE_INTERNALS_KNOWN
    from microbatching.queues._serialization import FAST_JSON_ENCODER

    assert FAST_JSON_ENCODER, "json.encoder.c_make_encoder changed: the JSON fast path is off"
    assert FUTURE_INTERNALS_KNOWN, "concurrent.futures.Future changed: JobResult falls back to a plain Future"


def _worker_info(worker_id: str, last_seen: float) -> WorkerInfo:
    return WorkerInfo(worker_id, "host-a", 123, "procs:echo", last_seen - 60, last_seen, done=5, failed=1)


def test_workers_are_tracked_by_heartbeat_and_forgotten_when_they_stop(tmp_path: Path) -> None:
    async def main() -> None:
        queue = SQLiteQueue(tmp_path / "q.db")
        try:
            now = time.time()
            assert await queue.workers() == []
            assert await queue.heartbeat(_worker_info("a", now)) is True
            assert await queue.heartbeat(_worker_info("b", now - 100)) is True  # silent for 100 s
            assert await queue.heartbeat(_worker_info("a", now + 1)) is True  # a's row is rewritten
            assert [(w.id, w.last_seen, w.done) for w in await queue.workers()] == [("a", now + 1, 5)]
            assert {w.id for w in await queue.workers(max_age=1000)} == {"a", "b"}
            await queue.forget_worker("a")
            assert await queue.workers() == []
            await queue.drop()  # the workers table goes with the rest
        finally:
            await queue.close()
        conn = sqlite3.connect(tmp_path / "q.db")
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [
            ("sqlite_sequence",)
        ]
        conn.close()

    run(main())


def test_a_read_only_handle_on_a_file_without_a_workers_table_lists_none_and_creates_nothing(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        queue = SQLiteQueue(tmp_path / "q.db")
        await queue.stats()  # creates the queue
        await queue.close()
        conn = sqlite3.connect(tmp_path / "q.db")
        conn.execute("DROP TABLE mb_workers")  # a file from before the workers table
        conn.close()
        reader = SQLiteQueue(tmp_path / "q.db", create=False)
        try:
            assert await reader.workers() == []
            assert await reader.heartbeat(_worker_info("a", time.time())) is False
            await reader.forget_worker("a")
        finally:
            await reader.close()
        conn = sqlite3.connect(tmp_path / "q.db")
        assert ("mb_workers",) not in conn.execute("SELECT name FROM sqlite_master").fetchall()
        conn.close()

    run(main())


def test_a_queue_that_does_not_track_workers_says_so_by_default(tmp_path: Path) -> None:
    async def main() -> None:
        queue = SQLiteQueue(tmp_path / "q.db")
        try:  # the ClaimQueue defaults, which a queue without a workers list keeps
            assert await ClaimQueue._workers(queue, 30.0) is None
            assert await ClaimQueue._heartbeat(queue, _worker_info("a", time.time())) is False
            assert ClaimQueue.atomic_enqueue_limit is None
        finally:
            await queue.close()

    run(main())
