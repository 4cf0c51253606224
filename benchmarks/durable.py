"""Durable queues end to end, against a raw loop of the same kind of SQL without the library.

SQLite: 50,000 jobs enqueued through ``AsyncMicroBatching`` on a
``microbatching.queues.sqlite.SQLiteQueue`` and drained by that one worker, against a
plain ``sqlite3`` loop that does what a durable queue must do per batch (insert the
jobs in one transaction; then per batch of 100: claim them, process them, delete them,
each in its own transaction).  Skipped, with a message, when the queue does not exist.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sqlite3
import tempfile
import time
from typing import Any

from harness import Comparison, Metrics, run_alternating

from microbatching import AsyncMicroBatching, Job

__all__ = ["bench"]

BATCH_SIZE = 100
INTERVAL = 0.005


def _sqlite_queue_class() -> Any:
    try:
        module = importlib.import_module("microbatching.queues.sqlite")
    except ImportError:
        return None
    return getattr(module, "SQLiteQueue", None)


def bench(n: int, repeats: int) -> Comparison:
    """Compare the library on SQLite with the raw loop, or say why it is skipped."""
    queue_class = _sqlite_queue_class()
    if queue_class is None:
        skipped = Comparison("durable (SQLite)", "raw sqlite3")
        skipped.notes.append("SKIPPED: microbatching.queues.sqlite.SQLiteQueue does not exist yet")
        return skipped
    impls = {"sqlite": lambda: _ours(queue_class, n), "raw sqlite3": lambda: _raw(n)}
    result = run_alternating(f"durable (SQLite, {n:,} jobs, one worker)", impls, repeats, "raw sqlite3")
    result.notes.append("raw sqlite3: one INSERT transaction, then per batch claim / process / delete")
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


def _raw(n: int) -> Metrics:
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(os.path.join(tmp, "raw.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, "
            "attempts INTEGER NOT NULL DEFAULT 0, lease REAL)"
        )
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO jobs (payload) VALUES (?)", ((json.dumps(x),) for x in range(n)))
        db.execute("COMMIT")
        ok = 0
        while True:
            db.execute("BEGIN IMMEDIATE")
            rows = db.execute(
                "SELECT id, payload FROM jobs WHERE lease IS NULL ORDER BY id LIMIT ?", (BATCH_SIZE,)
            ).fetchall()
            db.executemany(
                "UPDATE jobs SET lease = ?, attempts = attempts + 1 WHERE id = ?",
                ((time.time() + 30, row[0]) for row in rows),
            )
            db.execute("COMMIT")
            if not rows:
                break
            results = [json.loads(payload) * 2 for _, payload in rows]
            ok += sum(result == (row_id - 1) * 2 for result, (row_id, _) in zip(results, rows, strict=True))
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM jobs WHERE id = ?", ((row[0],) for row in rows))
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.close()
    if ok != n:
        raise AssertionError(f"durable raw: {ok} of {n} results were correct")
    return {"jobs_per_s": n / elapsed}
