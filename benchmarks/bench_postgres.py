"""The PostgreSQL queue: ``python benchmarks/run.py --only postgres`` (server: MICROBATCHING_POSTGRES_URL).

Five measures, each printed as a table:

- end to end: jobs submitted through ``AsyncMicroBatching`` on a ``PostgresQueue`` and
  processed by it, against a raw asyncpg loop running the queue's own statements (the
  same schema, enqueue, claim and acknowledge statements, by hand, without the library);
- against procrastinate on the same database, the same jobs and the same trivial work;
- 1, 2 and 4 worker processes (the real CLI) draining one queue;
- the claim/acknowledge loop on asyncpg and on psycopg 3 (the driver choice);
- the claim rate over the first jobs and after a million jobs have passed through one
  queue (the table's dead rows, vacuumed or not, are what could slow it).

Run as a script for the churn measure alone, with other settings:
``python benchmarks/bench_postgres.py --churn 1000000 --vacuum-every 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import queue_bench
from harness import Comparison, Metrics, format_table, run_alternating

from microbatching.queues._table import WORKER_LOST
from microbatching.queues.postgres import PostgresQueue

__all__ = ["bench"]

URL = os.environ.get("MICROBATCHING_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BATCH_SIZE = queue_bench.BATCH_SIZE
NO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class Sizes:
    jobs: int = 20_000
    peer_jobs: int = 3_000
    scaling_jobs: int = 20_000
    driver_jobs: int = 20_000
    churn_jobs: int = 1_000_000
    churn_window: int = 20_000


QUICK = Sizes(
    jobs=500, peer_jobs=100, scaling_jobs=500, driver_jobs=500, churn_jobs=2_000, churn_window=1_000
)


def bench(quick: bool, repeats: int) -> list[Comparison]:
    """Every PostgreSQL measure (tiny in quick mode, where no speed is judged)."""
    if not queue_bench.reachable(URL, 5432):
        skipped = Comparison(f"postgres: no server at {_where(URL)}: skipped", "-")
        skipped.notes.append("start PostgreSQL or set MICROBATCHING_POSTGRES_URL")
        return [skipped]
    sizes = QUICK if quick else Sizes()
    return [
        end_to_end(sizes.jobs, repeats),
        against_procrastinate(sizes.peer_jobs, max(1, repeats // 2)),
        queue_bench.worker_scaling("postgres", _url_for, sizes.scaling_jobs),
        drivers(sizes.driver_jobs, repeats),
        churn(sizes.churn_jobs, sizes.churn_window, repeats=max(1, min(repeats, 3))),
    ]


def _url_for(label: str) -> str:
    return f"{URL}?name=mb_bench_{label}_{uuid.uuid4().hex[:8]}"


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


# -- end to end, and the raw loop ------------------------------------------------------------


def end_to_end(n: int, repeats: int) -> Comparison:
    impls = {
        "postgres": lambda: queue_bench.ours_end_to_end(_url_for("ours"), n),
        "raw asyncpg": lambda: asyncio.run(_raw(n)),
    }
    result = run_alternating(f"postgres: {n:,} jobs end to end, one worker", impls, repeats, "raw asyncpg")
    result.notes.append(
        "raw asyncpg: the queue's own statements by hand on one connection: one INSERT of every job "
        f"(unique key, JSON id and data, NOTIFY), then per {BATCH_SIZE} jobs one claim (FOR UPDATE SKIP "
        "LOCKED, token, lease, attempts), decode and process, one acknowledgement under the token"
    )
    return result


async def _raw(n: int) -> Metrics:
    target = _url_for("raw")
    queue = PostgresQueue(target, vacuum_every=0)
    await queue.stats()  # the queue's own schema, so the loop stores exactly what the queue stores
    sql = queue.sql
    conn = await asyncpg.connect(URL)
    try:
        start = time.perf_counter()
        prefix = f"{secrets.token_hex(6)}-{os.getpid()}-"
        keys = [f"{prefix}{x}" for x in range(n)]
        job_ids = [json.dumps(key).encode() for key in keys]
        payloads = [json.dumps(x).encode() for x in range(n)]
        await conn.fetchval(sql.enqueue, keys, job_ids, payloads, [0.0] * n, queue.channel)
        ok = done = 0
        while done < n:
            token = secrets.token_hex(8)
            rows = await conn.fetch(sql.claim, BATCH_SIZE, token, 30.0, 1, WORKER_LOST)
            ids = [json.loads(row["job_id"]) for row in rows]
            results = [json.loads(row["payload"]) * 2 for row in rows]
            pairs = zip(ids, results, strict=True)
            ok += sum(job_id.startswith(prefix) and result % 2 == 0 for job_id, result in pairs)
            seqs = [row["seq"] for row in rows]
            done += await conn.fetchval(sql.ack, seqs, [token] * len(seqs), "done.0")
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
        await queue.drop()
        await queue.close()
    if ok != n:
        raise AssertionError(f"postgres raw: {ok} of {n} jobs were processed")
    return {"jobs_per_s": n / elapsed}


# -- procrastinate -------------------------------------------------------------------------


def against_procrastinate(n: int, repeats: int) -> Comparison:
    impls: dict[str, Any] = {"postgres": lambda: queue_bench.ours_end_to_end(_url_for("peer"), n)}
    notes = []
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        notes.append("procrastinate not installed: skipped (pip install -e '.[bench]')")
    else:
        impls["procrastinate"] = lambda: asyncio.run(_procrastinate(n))
    result = run_alternating(
        f"postgres: {n:,} jobs against procrastinate, same database", impls, repeats,
        "procrastinate" if "procrastinate" in impls else "postgres",
    )  # fmt: skip
    result.notes += notes
    result.notes.append(
        "procrastinate: the same jobs deferred with batch_defer_async (1,000 per call), one async worker "
        "(concurrency=10, delete_jobs='successful': finished jobs deleted, as this queue does) doubling "
        "each number, until the queue is empty; its schema in a schema of its own, dropped after"
    )
    return result


async def _procrastinate(n: int) -> Metrics:
    import procrastinate
    import psycopg

    schema = f"mb_bench_procrastinate_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as admin:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
    connector = procrastinate.PsycopgConnector(conninfo=URL, kwargs={"options": f"-c search_path={schema}"})
    app = procrastinate.App(connector=connector)
    doubled: list[int] = []

    @app.task(name="double")
    async def double(x: int) -> None:
        doubled.append(x * 2)

    try:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            start = time.perf_counter()
            for first in range(0, n, 1000):
                await double.batch_defer_async(*({"x": x} for x in range(first, min(n, first + 1000))))
            await app.run_worker_async(
                wait=False, concurrency=10, delete_jobs="successful", install_signal_handlers=False
            )
            elapsed = time.perf_counter() - start
    finally:
        async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as admin:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    if sorted(doubled) != [x * 2 for x in range(n)]:
        raise AssertionError(f"procrastinate: {len(doubled)} of {n} jobs were processed")
    return {"jobs_per_s": n / elapsed}


# -- asyncpg or psycopg ----------------------------------------------------------------------


def drivers(n: int, repeats: int) -> Comparison:
    impls: dict[str, Any] = {"asyncpg": lambda: asyncio.run(_driver_loop(n, "asyncpg"))}
    notes = []
    try:
        import psycopg  # noqa: F401
    except ImportError:
        notes.append("psycopg not installed: skipped (pip install -e '.[bench]')")
    else:
        impls["psycopg"] = lambda: asyncio.run(_driver_loop(n, "psycopg"))
    result = run_alternating(f"postgres: claim/ack loop of {n:,} jobs by driver", impls, repeats, "asyncpg")
    result.notes += notes
    result.notes.append(
        f"the queue's claim and acknowledgement statements, {BATCH_SIZE} jobs each, on one connection "
        "(asyncpg; psycopg 3 AsyncConnection, autocommit, prepared, binary); jobs/s, and the cpu ratio: "
        "jobs per second of this process's CPU time, to asyncpg's"
    )
    return result


async def _driver_loop(n: int, driver: str) -> Metrics:
    queue = PostgresQueue(_url_for("driver"), vacuum_every=0)
    try:
        await queue.aput_many(range(n))
        claim, ack = await _statements(driver, queue)
        started, cpu = time.perf_counter(), time.process_time()
        done = 0
        while done < n:
            token = secrets.token_hex(8)
            rows = await claim(BATCH_SIZE, token, 30.0, NO_LIMIT, WORKER_LOST)
            done += await ack([row[0] for row in rows], [token] * len(rows), "done.0")
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        await _close_driver(claim)
    finally:
        await queue.drop()
        await queue.close()
    return {"jobs_per_s": n / elapsed, "cpu_jobs_per_s": n / cpu}


async def _statements(driver: str, queue: PostgresQueue) -> tuple[Any, Any]:
    sql = queue.sql
    if driver == "asyncpg":
        conn = await asyncpg.connect(URL)

        async def claim_asyncpg(*args: Any) -> list[Any]:
            return list(await conn.fetch(sql.claim, *args))

        async def ack_asyncpg(*args: Any) -> int:
            count: int = await conn.fetchval(sql.ack, *args)
            return count

        claim_asyncpg.conn = conn  # type: ignore[attr-defined]
        return claim_asyncpg, ack_asyncpg
    import psycopg

    from microbatching.queues._pgsql import for_psycopg

    pconn = await psycopg.AsyncConnection.connect(URL, autocommit=True, prepare_threshold=0)
    claim_sql, ack_sql = for_psycopg(sql.claim), for_psycopg(sql.ack)

    def named(args: tuple[Any, ...]) -> dict[str, Any]:
        return {f"p{index}": value for index, value in enumerate(args, 1)}

    async def claim_psycopg(*args: Any) -> list[Any]:
        cursor = await pconn.execute(claim_sql, named(args), binary=True)
        return await cursor.fetchall()

    async def ack_psycopg(*args: Any) -> int:
        cursor = await pconn.execute(ack_sql, named(args), binary=True)
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    claim_psycopg.conn = pconn  # type: ignore[attr-defined]
    return claim_psycopg, ack_psycopg


async def _close_driver(claim: Any) -> None:
    await claim.conn.close()


# -- a million jobs through one queue ---------------------------------------------------------


def churn(total: int, window: int, vacuum_every: int | None = None, repeats: int = 3) -> Comparison:
    """The claim rate on a fresh queue, and on one ``total`` jobs have passed through, in turns."""
    fresh, churned, notes = asyncio.run(_churn(total, window, vacuum_every, repeats))
    setting = "default" if vacuum_every is None else str(vacuum_every)
    result = Comparison(f"postgres: claim rate after {total:,} jobs (vacuum_every={setting})", "fresh queue")
    result.runs = {"fresh queue": fresh, f"after {total:,} jobs": churned}
    result.notes += notes
    return result


async def _churn(
    total: int, window: int, vacuum_every: int | None, repeats: int
) -> tuple[list[Metrics], list[Metrics], list[str]]:
    options = {} if vacuum_every is None else {"vacuum_every": vacuum_every}
    churned = PostgresQueue(_url_for("churn"), **options)
    fresh_runs: list[Metrics] = []
    churned_runs: list[Metrics] = []
    try:
        await churned.stats()
        passed = 0
        while passed < total:
            passed += int((await _churn_window(churned, min(window, total - passed)))["jobs"])
        sizes = await _table_sizes(churned)
        for repeat in range(repeats):  # in turns, so the machine's load weighs on both alike
            for which in ("fresh", "churned") if repeat % 2 == 0 else ("churned", "fresh"):
                if which == "churned":
                    churned_runs.append(_claim_rate(await _churn_window(churned, window)))
                else:
                    fresh_runs.append(await _fresh_window(window, options))
    finally:
        await churned.drop()
        await churned.close()
    notes = [
        f"one queue passes {total:,} jobs (a backlog of about 1,000; rounds of: enqueue 1,000, then 10 x "
        f"claim {BATCH_SIZE} and ack); then, in turns, {repeats} windows of {window:,} jobs on it and on a "
        "new queue; jobs/s = jobs claimed per second spent in the claim statement",
        f"after {total:,} jobs: {sizes}",
    ]
    return fresh_runs, churned_runs, notes


async def _fresh_window(window: int, options: dict[str, Any]) -> Metrics:
    queue = PostgresQueue(_url_for("fresh"), **options)
    try:
        await queue.stats()
        return _claim_rate(await _churn_window(queue, window))
    finally:
        await queue.drop()
        await queue.close()


def _claim_rate(window: dict[str, float]) -> Metrics:
    return {"jobs_per_s": window["jobs_per_s"]}


async def _churn_window(queue: PostgresQueue, jobs: int) -> dict[str, float]:
    claiming = 0.0
    passed = 0
    started = time.perf_counter()
    while passed < jobs:
        await queue.aput_many(range(1000))
        for _ in range(10):
            begin = time.perf_counter()
            claimed = await queue.claim(BATCH_SIZE)
            claiming += time.perf_counter() - begin
            await queue.ack(claimed)
            passed += len(claimed)
    loop = time.perf_counter() - started
    return {"jobs_per_s": passed / claiming, "loop_jobs_per_s": passed / loop, "jobs": passed}


async def _table_sizes(queue: PostgresQueue) -> str:
    conn = await asyncpg.connect(URL)
    try:
        heap, indexes, dead, vacuums = await conn.fetchrow(
            "SELECT pg_relation_size(relid), pg_indexes_size(relid), n_dead_tup, "
            "vacuum_count + autovacuum_count FROM pg_stat_user_tables WHERE relid = $1::regclass",
            queue.sql.jobs,
        )
    finally:
        await conn.close()
    return (
        f"the jobs table {heap / 2**20:.1f} MiB, its indexes {indexes / 2**20:.1f} MiB, "
        f"{dead:,} dead rows, {vacuums} vacuums"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="the claim rate as jobs pass through one PostgreSQL queue")
    parser.add_argument(
        "--churn", type=int, default=1_000_000, help="jobs to pass through (default 1,000,000)"
    )
    parser.add_argument("--window", type=int, default=20_000, help="jobs per measured window")
    parser.add_argument("--repeats", type=int, default=3, help="measured windows on each queue")
    parser.add_argument("--vacuum-every", type=int, default=None, help="the queue's vacuum_every option")
    args = parser.parse_args()
    print(format_table(churn(args.churn, args.window, args.vacuum_every, args.repeats).summary()))


if __name__ == "__main__":
    main()
