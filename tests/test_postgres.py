"""PostgresQueue specifics beyond the conformance suite.

URLs and options, credentials kept out of messages, the schema (created once by many
workers at once, versioned, refused when foreign, dropped), transactional enqueue on the
caller's connection, statements counted per batch, the claim's index, the late-ack race
at the row-lock level, LISTEN/NOTIFY wake-ups, VACUUM, a dropped connection mid-run, and a
private server killed and restarted under running workers.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from backends import BACKENDS, POSTGRES
from conftest import free_port

from microbatching import AsyncMicroBatching, Job
from microbatching.errors import InvalidQueueError, QueueError
from microbatching.queues import open_queue

if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") != "1":
    pytest.importorskip(
        "asyncpg", reason="the PostgreSQL queue's client: pip install 'microbatching[postgres]'"
    )

import asyncpg

from microbatching.queues import postgres as pg_module
from microbatching.queues.postgres import PostgresQueue

sys.path.insert(0, str(Path(__file__).parent / "fault"))
from fault_harness import FaultRun, finish

T = TypeVar("T")
BACKEND = next(backend for backend in BACKENDS if backend.name == "postgres")
PG_BIN = Path(os.environ.get("MICROBATCHING_PG_BIN", "/usr/lib/postgresql/15/bin"))
NO_LIMIT = 2**31 - 1


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh queue name on the shared server; every table and schema it names is dropped afterwards."""
    BACKEND.check_available()
    queue_name = f"mb_pg_{uuid.uuid4().hex[:10]}"
    yield queue_name
    run(_drop_everything(queue_name))


async def _drop_everything(queue_name: str) -> None:
    async with Admin() as admin:
        for schema, table in await admin.fetch(
            "SELECT schemaname, tablename FROM pg_tables WHERE tablename LIKE $1", f"{queue_name}%"
        ):
            await admin.execute(f'DROP TABLE IF EXISTS "{schema}"."{table}"')
        await admin.execute(f'DROP SCHEMA IF EXISTS "{queue_name}_schema" CASCADE')


class Admin:
    """A plain asyncpg connection to the shared server, for looking behind the queue's back."""

    async def __aenter__(self) -> Any:
        self.conn = await asyncpg.connect(POSTGRES)
        return self.conn

    async def __aexit__(self, *exc_info: object) -> None:
        await self.conn.close()


def url(queue_name: str, base: str = POSTGRES, **options: Any) -> str:
    query = "&".join(f"{key}={value}" for key, value in {"name": queue_name, **options}.items())
    return f"{base}?{query}"


async def tables_named(queue_name: str) -> set[str]:
    async with Admin() as admin:
        rows = await admin.fetch(
            "SELECT schemaname || '.' || tablename FROM pg_tables WHERE tablename LIKE $1", f"{queue_name}%"
        )
    return {row[0] for row in rows}


async def schema_exists(schema: str) -> bool:
    async with Admin() as admin:
        return bool(await admin.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema))


async def stats_of(target: str, **options: Any) -> Any:
    queue = open_queue(target, **options)
    try:
        return await queue.stats()
    finally:
        await queue.close()


async def dropped(queue: Any) -> None:
    try:
        await queue.drop()
    finally:
        await queue.close()


# -- URLs and options (no server needed) ---------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_both_schemes_open_a_postgres_queue(scheme: str) -> None:
    queue = open_queue(f"{scheme}://app@db.example:6432/jobs?name=emails&lease=60&sslmode=require")
    assert isinstance(queue, PostgresQueue)
    assert (queue.table.name, queue.schema, queue.lease) == ("emails", "public", 60.0)
    assert queue._dsn == "postgresql://app@db.example:6432/jobs?sslmode=require"  # libpq's part only
    assert queue.channel == "microbatching:public.emails"


def test_options_in_the_url_and_as_arguments() -> None:
    queue = PostgresQueue(
        "postgresql://h/db?schema=work&poll=2&pool_size=2&vacuum_every=0", name="q", lease=5
    )
    assert (queue.schema, queue.table.name, queue.poll, queue.pool_size, queue.vacuum_every, queue.lease) == (
        "work", "q", 2.0, 2, 0, 5.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="lease is given both in the URL"):
        PostgresQueue("postgresql://h/db?lease=5", lease=6)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("postgresql://h/db?name=Bad-Name", "queue name"),
        ("postgresql://h/db?schema=1x", "schema must be"),
        ("postgresql://h/db?pool_size=0", "pool_size"),
        ("postgresql://h/db?lease=0", "lease"),
        ("postgresql://h/db?poll=0", "poll"),
        ("postgresql://h/db?vacuum_every=-1", "vacuum_every"),
        ("mysql://h/db", "not a PostgreSQL queue URL"),
    ],
)
def test_bad_urls_and_options_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PostgresQueue(text)


def test_connections_are_named_after_the_queue_unless_the_url_names_them() -> None:
    assert PostgresQueue("postgresql://h/db?name=q")._settings == {
        "application_name": "microbatching public.q"
    }
    assert PostgresQueue("postgresql://h/db?name=q&application_name=mine")._settings == {}


def test_a_password_never_reaches_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-Pa55"
    port = free_port()  # nobody listens there
    queue = PostgresQueue(
        f"postgresql://app:{secret}@127.0.0.1:{port}/db?name=q&reconnect_timeout=0.3&sslpassword={secret}"
    )
    assert secret not in repr(queue)

    async def main() -> None:
        try:
            await queue.stats()
        finally:
            await queue.close()

    with caplog.at_level(logging.DEBUG, logger="microbatching"), pytest.raises(QueueError) as failure:
        run(main())
    assert secret not in str(failure.value) and "***" in str(failure.value)
    assert caplog.records, "the lost connection is logged"
    assert all(secret not in record.getMessage() for record in caplog.records)


def test_a_password_never_reaches_the_cli_stats_output(name: str) -> None:
    secret = "cli-s3cret"  # trust authentication: the server ignores it
    target = url(name, POSTGRES.replace("postgres@", f"postgres:{secret}@", 1))
    run(stats_of(target))  # creates the queue
    out = subprocess.run(
        [sys.executable, "-m", "microbatching", "stats", "--queue", target, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert secret not in out.stdout + out.stderr
    assert json.loads(out.stdout)["pending"] == 0


# -- the schema ---------------------------------------------------------------------------------


def test_eight_handles_creating_the_queue_at_once_make_it_once(name: str) -> None:
    async def main() -> list[Any]:
        queues = [open_queue(url(name, schema=f"{name}_schema")) for _ in range(8)]
        try:
            return list(await asyncio.gather(*(queue.stats() for queue in queues)))
        finally:
            await asyncio.gather(*(queue.close() for queue in queues))

    assert [stats.pending for stats in run(main())] == [0] * 8
    assert run(tables_named(name)) == {f"{name}_schema.{name}_{t}" for t in ("jobs", "dead", "meta")}


def test_the_schema_is_versioned_and_records_the_serializer(name: str) -> None:
    async def main() -> None:
        await stats_of(url(name))
        async with Admin() as admin:
            rows = dict(await admin.fetch(f'SELECT name, value FROM "{name}_meta" WHERE value IS NOT NULL'))
            assert rows == {"schema": "2", "serializer": "json"}
            with pytest.raises(InvalidQueueError, match="serializer='json'"):
                await stats_of(url(name, serializer="pickle"))
            await admin.execute(f"UPDATE \"{name}_meta\" SET value = '3' WHERE name = 'schema'")
            with pytest.raises(InvalidQueueError, match="newer than this microbatching knows"):
                await stats_of(url(name))

    run(main())


def test_create_false_creates_nothing_and_says_the_queue_is_missing(name: str) -> None:
    async def main() -> None:
        with pytest.raises(InvalidQueueError, match=f"no queue named '{name}'"):
            await stats_of(url(name, schema=f"{name}_schema"), create=False)
        assert await tables_named(name) == set()
        assert not await schema_exists(f"{name}_schema")
        await stats_of(url(name))
        assert (await stats_of(url(name), create=False)).pending == 0  # once it exists, it opens

    run(main())


def test_a_table_that_is_not_a_queues_is_refused_and_left_alone(name: str) -> None:
    async def main() -> None:
        async with Admin() as admin:
            await admin.execute(f'CREATE TABLE "{name}_jobs" (id int)')
        with pytest.raises(InvalidQueueError, match="not a microbatching queue's"):
            await stats_of(url(name))
        assert await tables_named(name) == {f"public.{name}_jobs"}

    run(main())


def test_drop_removes_the_tables_and_a_schema_only_queues_created(name: str) -> None:
    own = f"{name}_schema"

    async def main() -> None:
        for queue_name in (name, f"{name}_b"):  # two queues in a schema the first one created
            await stats_of(url(queue_name, schema=own))
        await dropped(open_queue(url(name, schema=own)))
        assert await schema_exists(own)  # the other queue is still in it
        await dropped(open_queue(url(f"{name}_b", schema=own)))
        assert not await schema_exists(own)
        assert await tables_named(name) == set()
        async with Admin() as admin:
            await admin.execute(f'CREATE SCHEMA "{own}"')  # a schema of the user's own stays
        await stats_of(url(name, schema=own))
        await dropped(open_queue(url(name, schema=own)))
        assert await schema_exists(own) and await tables_named(name) == set()

    run(main())


def test_queues_and_schemas_stay_apart(name: str) -> None:
    async def main() -> None:
        queues = [
            open_queue(url(name)),
            open_queue(url(f"{name}_b")),
            open_queue(url(name, schema=f"{name}_schema")),
        ]
        try:
            await queues[0].aput_many(range(3))
            await queues[1].aput("b")
            assert [(await queue.stats()).pending for queue in queues] == [3, 1, 0]
            assert [job.data for job in await queues[1].claim(10)] == ["b"]
        finally:
            for queue in queues:
                await dropped(queue)

    run(main())


# -- transactional enqueue ------------------------------------------------------------------------


def test_put_on_an_asyncpg_transaction_commits_or_rolls_back_with_it(name: str) -> None:
    async def main() -> None:
        queue = open_queue(url(name))
        async with Admin() as conn:
            try:
                await conn.execute(f'CREATE TABLE "{name}_orders" (id int)')
                async with conn.transaction():
                    await conn.execute(f'INSERT INTO "{name}_orders" VALUES (1)')
                    assert await queue.aput({"order": 1}, id="order-1", connection=conn) == "order-1"
                    assert (await queue.stats()).pending == 0  # invisible until the commit
                transaction = conn.transaction()
                await transaction.start()
                await conn.execute(f'INSERT INTO "{name}_orders" VALUES (2)')
                await queue.aput_many([{"order": 2}, {"order": 3}], connection=conn)
                await transaction.rollback()
                jobs = await queue.claim(10)
                assert [(job.id, job.data) for job in jobs] == [("order-1", {"order": 1})]
                assert await conn.fetchval(f'SELECT count(*) FROM "{name}_orders"') == 1
            finally:
                await conn.execute(f'DROP TABLE IF EXISTS "{name}_orders"')
                await dropped(queue)

    run(main())


def test_a_waiting_worker_is_woken_when_the_producers_transaction_commits(name: str) -> None:
    async def main() -> None:
        queue = open_queue(url(name, poll=30))  # it never polls: only a notification can wake it
        try:
            await queue.stats()
            waiting = asyncio.ensure_future(queue.claim(5, wait=10.0))
            await asyncio.sleep(0.3)
            async with Admin() as conn, conn.transaction():
                await queue.aput("hello", connection=conn)
                await asyncio.sleep(0.5)
                assert not waiting.done()  # nothing to see before the commit
            committed = time.monotonic()
            jobs = await asyncio.wait_for(waiting, 10)
            woke_after = time.monotonic() - committed
            assert [job.data for job in jobs] == ["hello"]
            assert woke_after < 1.0, f"the claim took {woke_after:.2f} s after the commit"
        finally:
            await dropped(queue)

    run(main())


def test_put_on_a_psycopg_async_connection(name: str) -> None:
    psycopg = pytest.importorskip("psycopg")

    async def main() -> None:
        queue = open_queue(url(name))
        try:
            async with await psycopg.AsyncConnection.connect(POSTGRES) as conn:
                async with conn.transaction():
                    await queue.aput_many(["a", "b"], ids=["a", "b"], connection=conn)
                async with conn.transaction(force_rollback=True):
                    await queue.aput("c", connection=conn)
            assert sorted(job.id for job in await queue.claim(10)) == ["a", "b"]
        finally:
            await dropped(queue)

    run(main())


def test_put_on_a_psycopg_connection_from_synchronous_code(name: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    queue = open_queue(url(name))
    try:
        with psycopg.connect(POSTGRES) as conn:
            with conn.transaction():
                assert queue.put({"n": 1}, id="kept", connection=conn) == "kept"
            with conn.transaction(force_rollback=True):
                queue.put_many([{"n": 2}], connection=conn)
        with pytest.raises(TypeError, match=r"psycopg\.Connection"):
            queue.put(1, connection=object())
    finally:
        queue.close_blocking()
    assert run(stats_of(url(name))).pending == 1


# -- round trips, the claim's index, the late-ack race ------------------------------------------


def test_statements_per_batch_counted_on_the_wire(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: collections.Counter[str] = collections.Counter()
    real_create_pool = asyncpg.create_pool

    async def log_queries(conn: Any) -> None:
        conn.add_query_logger(lambda record: statements.update([_kind(record.query)]))

    def create_pool(*args: Any, **kwargs: Any) -> Any:
        return real_create_pool(*args, init=log_queries, **kwargs)

    monkeypatch.setattr(pg_module.asyncpg, "create_pool", create_pool)
    jobs = 2_000

    async def main() -> tuple[list[int], int]:
        async def process(batch: list[Job[int]]) -> list[int]:
            return [job.data * 2 for job in batch]

        queue = open_queue(url(name))
        await queue.stats()  # the schema check, before counting
        statements.clear()
        async with AsyncMicroBatching(queue, process, batch_size=100, batch_interval=0.005) as mb:
            futures = [mb.submit_job_nowait(Job(i, i)) for i in range(jobs)]
            results = list(await asyncio.gather(*futures))
        return results, mb.stats().batches

    results, batches = run(main())
    assert results == [i * 2 for i in range(jobs)]
    hot = {kind: statements[kind] for kind in ("enqueue", "claim", "ack")}
    print(f"\nROUND TRIPS {jobs} jobs in {batches} batches: {dict(statements)}; "
          f"enqueue+claim+ack {sum(hot.values()) / batches:.2f} per batch")  # fmt: skip
    assert batches >= jobs // 100
    assert hot["enqueue"] <= 3  # the jobs submitted in one tick go out in one statement (or a few)
    assert hot["ack"] <= batches
    assert hot["claim"] <= batches + 5  # one per batch, and the idle ones at the end
    assert sum(statements.values()) < jobs / 20  # nothing per job


def _kind(query: str) -> str:
    text = " ".join(query.split())
    marks = (("claim", "FOR UPDATE SKIP LOCKED"), ("ack", "counted AS"), ("enqueue", "pg_notify($5"))
    return next((kind for kind, mark in marks if mark in text), text[:60].lower())


def test_claims_and_settles_keep_to_their_indexes_whatever_the_statistics_say(name: str) -> None:
    # The table is analyzed while empty (a queue often is); then 1,000, then 50,000 jobs
    # arrive.  Every statement of a batch still reads the jobs table through an index
    # condition only, and reads about as much with 50,000 jobs queued as with 1,000.
    async def explain(conn: Any, sql: str, *args: Any) -> dict[str, Any]:
        transaction = conn.transaction()
        await transaction.start()
        try:  # EXPLAIN ANALYZE runs the statement: rolled back, nothing changes
            plan: dict[str, Any] = json.loads(
                await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args)
            )[0]
        finally:
            await transaction.rollback()
        return plan

    async def main() -> dict[str, list[int]]:
        queue = open_queue(url(name))
        read: dict[str, list[int]] = collections.defaultdict(list)
        try:
            await queue.stats()
            async with Admin() as admin:
                await admin.execute(f'VACUUM ANALYZE "{name}_jobs"')  # statistics: no rows
            conn = await asyncpg.connect(POSTGRES, server_settings=pg_module.PLANNER_SETTINGS)
            try:
                for backlog in (1_000, 50_000):
                    await queue.aput_many(range(backlog - ((await queue.stats()).pending or 0)))
                    held = await queue.claim(100, 60.0)
                    seqs = sorted(job.receipt.ref for job in held)
                    tokens = [held[0].receipt.token] * len(seqs)
                    statements = {
                        "claim": (queue.sql.claim, 100, "token", 30.0, NO_LIMIT, pg_module.WORKER_LOST),
                        "ack": (queue.sql.ack, seqs, tokens, "done.0"),
                        "retry": (queue.sql.retry, seqs, tokens, [1.0] * len(seqs), queue.channel),
                        "extend": (queue.sql.extend, seqs, tokens, 30.0),
                        "dead_letter": (
                            queue.sql.dead_letter,
                            seqs,
                            tokens,
                            ["e"] * len(seqs),
                            [None] * len(seqs),
                        ),
                    }
                    for kind, (sql, *args) in statements.items():
                        plan = await explain(conn, sql, *args)
                        for node in _nodes(plan["Plan"]):
                            scan = node["Node Type"].endswith("Scan")
                            if scan and node.get("Relation Name") == f"{name}_jobs":
                                assert node["Node Type"] == "Index Scan" and "Index Cond" in node, (
                                    kind,
                                    node,
                                )
                        read[kind].append(
                            plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
                        )
                    await queue.release(held)
            finally:
                await conn.close()
        finally:
            await dropped(queue)
        return read

    read = run(main())
    print(f"\nBUFFERS READ per statement of 100 jobs, 1,000 then 50,000 queued: {dict(read)}")
    for kind, (small, large) in read.items():
        assert large < small * 1.6 + 50, (
            f"{kind} read {small} buffers with 1,000 jobs queued, {large} with 50,000"
        )


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def test_a_late_ack_waiting_on_the_row_lock_finds_the_job_leased_again(name: str) -> None:
    # The race the token guards against, at its tightest: worker A's lease ran out and
    # worker B is claiming the job (B's claim holds the row lock) when A's ack arrives.
    # A's ack waits for B to commit, re-checks the row, and finds B's token: it removes nothing.
    async def main() -> None:
        late = open_queue(url(name))
        try:
            await late.aput("contended", id="j")
            (stale,) = await late.claim(1, 0.2)
            await asyncio.sleep(0.3)  # A's lease runs out
            async with Admin() as b:
                async with b.transaction():
                    rows = await b.fetch(late.sql.claim, 1, "b-token", 30.0, NO_LIMIT, pg_module.WORKER_LOST)
                    assert [row["key"] for row in rows] == [stale.receipt.key]
                    acking = asyncio.ensure_future(late.ack([stale]))
                    await _until_one_waits_on_a_lock(late)
                    assert not acking.done()
                assert await acking == 0  # B committed first: A's token no longer matches
                row = await b.fetchrow(f'SELECT token, attempts FROM "{name}_jobs"')
                assert tuple(row) == ("b-token", 2)
            assert (await late.stats()).done == 0
        finally:
            await dropped(late)

    run(main())


async def _until_one_waits_on_a_lock(queue: Any) -> None:
    deadline = time.monotonic() + 10
    async with Admin() as admin:
        while time.monotonic() < deadline:
            waiting = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                f"microbatching public.{queue.table.name}",
            )
            if waiting:
                return
            await asyncio.sleep(0.02)
    pytest.fail("the late acknowledgement never waited on the row lock")


# -- waking idle workers ------------------------------------------------------------------------


def test_an_idle_claim_wakes_when_a_delayed_job_is_due_without_polling(name: str) -> None:
    async def main() -> float:
        queue = open_queue(url(name, poll=30))
        try:
            await queue.aput("later", delay=0.6)
            started = time.monotonic()
            (job,) = await queue.claim(5, wait=10.0)
            assert job.data == "later"
            return time.monotonic() - started
        finally:
            await dropped(queue)

    waited = run(main())
    # Never before the job is due; well before the 30 s poll (a loaded machine adds seconds).
    assert 0.55 <= waited < 10, f"the claim returned after {waited:.2f} s for a job due in 0.6 s"


def test_an_idle_worker_sends_nothing_until_a_job_can_be_ready(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: list[float] = []
    real_create_pool = asyncpg.create_pool

    async def log_claims(conn: Any) -> None:
        conn.add_query_logger(
            lambda record: "SKIP LOCKED" in record.query and claims.append(time.monotonic())
        )

    def create_pool(*args: Any, **kwargs: Any) -> Any:
        return real_create_pool(*args, init=log_claims, **kwargs)

    monkeypatch.setattr(pg_module.asyncpg, "create_pool", create_pool)

    async def main() -> tuple[int, float]:
        idle, other = open_queue(url(name, poll=30)), open_queue(url(name))
        try:
            await other.aput("held")
            (held,) = await other.claim(1, 30.0)
            for _ in range(3):  # as a batcher's claim loop calls it, one second at a time
                assert await idle.claim(5, wait=1.0) == []
            idle_claims = len(claims)
            retried = time.monotonic()
            await other.retry([held], [0.4])  # notifies: the idle claim looks again, then sleeps till due
            (job,) = await idle.claim(5, wait=10.0)
            assert job.data == "held"
            return idle_claims, time.monotonic() - retried
        finally:
            await other.close()
            await dropped(idle)

    idle_claims, took = run(main())
    assert idle_claims == 2  # the held job's own claim, and one idle look in three seconds of waiting
    assert 0.35 <= took < 1.5, f"the retried job reached the idle worker after {took:.2f} s (due after 0.4 s)"


def test_an_idle_claim_listens_again_after_its_connection_was_killed(name: str) -> None:
    async def main() -> float:
        consumer, producer = open_queue(url(name, poll=30)), open_queue(url(name))
        try:
            assert await consumer.claim(1, wait=0.2) == []  # listening now
            await BACKEND.break_connection(consumer)  # type: ignore[misc]  # the listener too
            waiting = asyncio.ensure_future(consumer.claim(5, wait=10.0))
            await asyncio.sleep(0.5)  # the claim has listened again by now
            started = time.monotonic()
            await producer.aput("after the kill")
            (job,) = await asyncio.wait_for(waiting, 10)
            assert job.data == "after the kill"
            return time.monotonic() - started
        finally:
            await producer.close()
            await dropped(consumer)

    woke_after = run(main())
    assert woke_after < 1.0, f"the claim took {woke_after:.2f} s to see the job"


# -- keeping the table small --------------------------------------------------------------------


def test_a_worker_vacuums_the_jobs_table_after_claiming_vacuum_every_jobs(name: str) -> None:
    async def main() -> int:
        queue = open_queue(url(name, vacuum_every=500))
        try:
            for _ in range(3):
                await queue.aput_many(range(400))
                await queue.ack(await queue.claim(400))
            vacuuming = queue._vacuuming
            assert vacuuming is not None, "no VACUUM started after 1,200 claimed jobs"
            await vacuuming
            async with Admin() as admin:
                count: int = await admin.fetchval(
                    "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = $1::regclass",
                    f'"{name}_jobs"',
                )
            return count
        finally:
            await dropped(queue)

    assert run(main()) >= 1


# -- connections killed and a server restarted mid-run ------------------------------------------


def test_connections_killed_mid_run_lose_nothing_and_acknowledge_nothing_twice(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = 3_000
    seen: collections.Counter[int] = collections.Counter()

    async def process(batch: list[Job[int]]) -> list[int]:
        seen.update(job.data for job in batch)
        await asyncio.sleep(0.02)
        return [job.data * 2 for job in batch]

    async def main() -> tuple[list[int], int]:
        queue = open_queue(url(name, lease=1))
        kills = 0
        async with AsyncMicroBatching(queue, process, batch_size=50, batch_interval=0.005) as mb:
            futures = [mb.submit_job_nowait(Job(i, i)) for i in range(jobs)]
            gathered = asyncio.ensure_future(asyncio.gather(*futures))
            while not gathered.done():
                await asyncio.sleep(0.1)
                await BACKEND.break_connection(queue)  # type: ignore[misc]
                kills += 1
            results = await gathered
        return results, kills

    async def drain() -> Any:
        # A job whose acknowledgement was cut off comes back after its lease, to any worker.
        async with AsyncMicroBatching(open_queue(url(name, lease=1)), process, batch_interval=0.005):
            for _ in range(300):
                stats = await stats_of(url(name))
                if stats.empty:
                    break
                await asyncio.sleep(0.1)
        return stats

    with caplog.at_level(logging.WARNING, logger="microbatching"):
        results, kills = run(main())
    lost_lines = sum("lost the connection" in record.getMessage() for record in caplog.records)
    stats = run(drain())
    duplicates = sum(seen.values()) - len(seen)
    print(f"\nKILLED CONNECTIONS jobs={jobs} kills={kills} lost={jobs - len(seen)} duplicates={duplicates} "
          f"done={stats.done} 'lost the connection' log lines={lost_lines}")  # fmt: skip
    assert results == [i * 2 for i in range(jobs)]
    assert kills >= 3
    # Said once per drop (or so), never per job; a kill that lands on a connection idle in
    # the pool is replaced without a word, so on a quick run there may be no line at all.
    assert lost_lines <= 2 * kills
    assert sorted(seen) == list(range(jobs))
    assert stats.done == jobs  # each job acknowledged exactly once
    assert (stats.pending, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)


class PrivateServer:
    """A PostgreSQL cluster of the test's own: initdb into a temporary directory, a free port.

    ``fsync`` and ``synchronous_commit`` are on (the defaults, stated anyway): a committed
    transaction is on disk before the client hears of it, so an immediate stop (a crash, as
    far as the data is concerned) keeps every acknowledged write.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mb-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            if shutil.which("runuser") is None or _uid("postgres") is None:
                _unavailable(
                    "running as root, with no postgres user (and runuser) to run a private server as"
                )
            self._as_user = ["runuser", "-u", "postgres", "--"]
            os.chown(self.root, _uid("postgres"), -1)  # type: ignore[arg-type]

    def _run(self, tool: str, *args: str) -> None:
        out = subprocess.run([*self._as_user, str(PG_BIN / tool), *args], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed: {out.stdout}{out.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on "
                   "-c synchronous_commit=on -c max_connections=60 -c shared_buffers=32MB")  # fmt: skip
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", options, "start")

    def kill(self) -> None:
        """Stop at once, as in a crash: no checkpoint, connections cut (recovery replays the WAL)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def _uid(user: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _unavailable(reason: str) -> None:
    if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and MICROBATCHING_REQUIRE_SERVICES=1 requires a private server")
    pytest.skip(reason)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    if not (PG_BIN / "initdb").exists():
        _unavailable(f"no PostgreSQL server binaries at {PG_BIN} (set MICROBATCHING_PG_BIN)")
    server = PrivateServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


@pytest.mark.timeout(180)
def test_a_server_killed_and_restarted_under_running_workers_loses_no_acknowledged_job(
    private_server: PrivateServer, tmp_path: Path
) -> None:
    jobs, restarts = 6_000, 2
    target = url("mb_restart", private_server.url, lease=2)
    fault = FaultRun(tmp_path, "server restart", target, env={"FAULT_SLEEP": "0.01"})
    fault.enqueue(range(jobs))  # acknowledged by the server: every one of them must be processed
    workers = [fault.worker("--batch-size", "50", "--batch-interval", "0.01", "--concurrency", "2")
               for _ in range(2)]  # fmt: skip
    outages = []
    for _ in range(restarts):
        before = fault.effect_count()
        while fault.effect_count() == before:  # until the workers are busy
            time.sleep(0.01)
        time.sleep(0.3)
        private_server.kill()
        down = time.monotonic()
        time.sleep(1.0)
        private_server.start()
        outages.append(round(time.monotonic() - down, 2))
    deadline = time.monotonic() + 120
    stats = fault.stats()[0]
    while stats.done != jobs and time.monotonic() < deadline:
        assert all(worker.poll() is None for worker in workers), "a worker died"
        time.sleep(0.2)
        stats = fault.stats()[0]
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    codes = [finish(worker) for worker in workers]
    counts = fault.counts()
    stats, dead = fault.stats()
    fault.report(
        jobs=jobs, restarts=restarts, outage_s=outages, lost=jobs - len(counts),
        duplicates=sum(counts.values()) - len(counts), done=stats.done, left_leased=stats.in_flight,
        dead=len(dead), worker_exit_codes=codes,
    )  # fmt: skip
    assert codes == [0, 0]  # the same two workers, never restarted, drained cleanly
    assert sorted(counts) == list(range(jobs))  # nothing lost
    assert stats.done == jobs
    assert (stats.pending, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
    # A job runs twice only when its acknowledgement was cut off by a kill.
    assert sum(counts.values()) - len(counts) <= restarts * 2 * 50 * 3


@pytest.mark.timeout(300)
def test_the_quick_benchmark_runs_every_postgres_measure(tmp_path: Path) -> None:
    BACKEND.check_available()
    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(benchmarks / "run.py"), "--quick", "--only", "postgres", "--json", str(out)],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"postgres", *(f"postgres/{index}" for index in range(1, 5))}
    assert set(results["postgres"]["impls"]) == {"postgres", "raw asyncpg"}
    assert set(results["postgres/2"]["impls"]) == {"1 worker", "2 workers", "4 workers"}
    assert all(m["jobs_per_s"] > 0 for r in results.values() for m in r["impls"].values())
