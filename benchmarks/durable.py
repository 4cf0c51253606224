"""Durable queues end to end, against a raw loop of the same SQL without the library.

SQLite: 50,000 jobs enqueued through ``AsyncMicroBatching`` on a
``microbatching.queues.sqlite.SQLiteQueue`` and drained by that one worker, against a
plain ``sqlite3`` loop running the queue's own table and transactions (same WAL and
``synchronous=NORMAL``): insert every job in one transaction (unique key, JSON id and
data); then per batch of 100, one transaction that checks for expired last attempts and
leases the oldest ready jobs under a fresh token (attempts counted in the table), the
jobs decoded and processed, and one transaction that deletes them under their token and
counts them done.  Skipped, with a message, when the queue does not exist.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import tempfile
import time
from typing import Any

import durable_peers
from harness import Comparison, Metrics, run_alternating

from microbatching import AsyncMicroBatching, Job
from microbatching.queues.sqlite import _SCHEMA, SQLiteQueue

__all__ = ["bench"]

BATCH_SIZE = 100
INTERVAL = 0.005


#: The other SQLite job queues measured beside ours (see durable_peers.py).
PEERS = tuple(durable_peers.PEERS)


def bench(n: int, repeats: int, peer_n: int) -> Comparison:
    """Compare the library on SQLite with the raw loop of the same statements, and with the peers.

    The peers run ``peer_n`` jobs each (they take a transaction or more per job, so the
    full count would take minutes); jobs/s is what is compared.
    """
    impls = {"sqlite": lambda: _ours(SQLiteQueue, n), "raw sqlite3": lambda: _raw(n)}
    peers, missing = durable_peers.available(peer_n)
    impls.update(peers)
    result = run_alternating(f"durable (SQLite, {n:,} jobs, one worker)", impls, repeats, "raw sqlite3")
    result.notes.append(
        "raw sqlite3: SQLiteQueue's schema and statements by hand: one INSERT transaction, then per batch "
        "of 100 a lease transaction (token, attempts), decode and process, a delete-under-token transaction"
    )
    if peers:
        result.notes.append(
            f"{', '.join(peers)}: {peer_n:,} jobs each, one put per job, then take, double and "
            "acknowledge one by one; huey stores each result (its default), fsync off sets synchronous=OFF"
        )
    result.notes.extend(missing)
    return result


def _ours(queue_class: Any, n: int) -> Metrics:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "queue.db")

        async def main() -> float:
            async def process(jobs: list[Job[int]]) -> list[int]:
                return [job.data * 2 for job in jobs]

            batcher = AsyncMicroBatching(
                queue_class(path), process, batch_size=BATCH_SIZE, batch_interval=INTERVAL, retry=None
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
                raise AssertionError(f"durable sqlite: {ok} of {n} results were correct")
            return elapsed

        return {"jobs_per_s": n / asyncio.run(main())}


# The raw loop's table and statements are those of SQLiteQueue (copied, not imported, so
# the loop stays library-free): the same durable work per job, no more and no less.  Keep
# them in step with src/microbatching/queues/sqlite.py.
# The queue's own schema, so the raw loop stores exactly what the queue stores; only the
# statements below are written by hand.
_RAW_SCHEMA = _SCHEMA.format(jobs="mb_jobs", dead="mb_dead", meta="mb_meta")
_LEASE = 30.0


def _raw(n: int) -> Metrics:
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "raw.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_RAW_SCHEMA)
        start = time.perf_counter()
        _raw_enqueue(db, n)
        ok = 0
        while rows := _raw_claim(db, BATCH_SIZE):
            results = [json.loads(payload.decode()) * 2 for _, _, _, payload in rows]
            expected = [json.loads(job_id.decode()) * 2 for _, _, job_id, _ in rows]
            ok += sum(result == want for result, want in zip(results, expected, strict=True))
            _raw_ack(db, rows[0][1], [seq for seq, _, _, _ in rows])
        elapsed = time.perf_counter() - start
        db.close()
    if ok != n:
        raise AssertionError(f"durable raw: {ok} of {n} results were correct")
    return {"jobs_per_s": n / elapsed}


def _raw_enqueue(db: sqlite3.Connection, n: int) -> None:
    """One transaction: every job with a unique key, its encoded id (here its value) and data."""
    now = time.time()
    prefix = f"{secrets.token_hex(6)}-{os.getpid()}-"
    db.execute("BEGIN IMMEDIATE")
    db.executemany(
        "INSERT OR IGNORE INTO mb_jobs (key, job_id, payload, available_at, enqueued_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(f"{prefix}{x}", json.dumps(x).encode(), json.dumps(x).encode(), now, now) for x in range(n)],
    )
    db.execute("COMMIT")


def _raw_claim(db: sqlite3.Connection, limit: int) -> list[tuple[int, str, bytes, bytes]]:
    """One transaction: dead-letter expired last attempts, lease the oldest ready jobs under a fresh token."""
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    exhausted = db.execute(
        "SELECT seq, token, attempts FROM mb_jobs "
        "WHERE available_at <= ? AND token IS NOT NULL AND attempts >= ?",
        (now, 1),
    ).fetchall()
    if exhausted:
        raise AssertionError("durable raw: no lease can expire in this run")
    rows = db.execute(
        "SELECT seq, key, job_id, payload, attempts, recovered, token FROM mb_jobs "
        "WHERE available_at <= ? ORDER BY available_at, seq LIMIT ?",
        (now, limit),
    ).fetchall()
    token = secrets.token_hex(8)
    if rows:
        db.execute(
            "UPDATE mb_jobs SET token = ?, available_at = ?, attempts = attempts + 1, "
            f"recovered = recovered + (token IS NOT NULL) WHERE seq IN ({', '.join('?' * len(rows))})",
            (token, now + _LEASE, *(row[0] for row in rows)),
        )
    db.execute("COMMIT")
    return [(seq, token, job_id, payload) for seq, _, job_id, payload, *_ in rows]


def _raw_ack(db: sqlite3.Connection, token: str, seqs: list[int]) -> None:
    """One transaction: delete the jobs still held under their token, count them done."""
    db.execute("BEGIN IMMEDIATE")
    before = db.total_changes
    marks = ", ".join("?" * len(seqs))
    db.execute(f"DELETE FROM mb_jobs WHERE token = ? AND seq IN ({marks})", (token, *seqs))
    done = db.total_changes - before
    db.execute("UPDATE mb_meta SET value = CAST(value AS INTEGER) + ? WHERE name = 'done'", (done,))
    db.execute("COMMIT")
