"""SQLiteQueue: the embedded durable queue (one file, WAL, several worker processes)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._claims import DeadLetter, Lease, Message, QueueCapabilities, QueueStats
from .._job import Job
from .._serialization import DEFAULT_MAX_PAYLOAD_BYTES, Serializer
from ..errors import MicroBatchingError
from ..interfaces import ClaimQueue

__all__ = ["SQLiteQueue"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mb_jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    key          TEXT    NOT NULL UNIQUE,
    job_id       BLOB    NOT NULL,
    payload      BLOB    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    recovered    INTEGER NOT NULL DEFAULT 0,
    token        TEXT,
    available_at REAL    NOT NULL,
    enqueued_at  REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS mb_jobs_available ON mb_jobs (available_at);
-- Leased jobs only: finding expired leases at each claim must not scan every ready job.
CREATE INDEX IF NOT EXISTS mb_jobs_leased ON mb_jobs (available_at) WHERE token IS NOT NULL;
CREATE TABLE IF NOT EXISTS mb_dead (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    key          TEXT    NOT NULL,
    job_id       BLOB    NOT NULL,
    payload      BLOB    NOT NULL,
    attempts     INTEGER NOT NULL,
    error        TEXT    NOT NULL,
    enqueued_at  REAL    NOT NULL,
    failed_at    REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS mb_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO mb_meta VALUES ('done', '0');
"""

# Expired leases after the last attempt; answered from the small mb_jobs_leased index.
_EXHAUSTED = (
    "SELECT seq, token, attempts FROM mb_jobs WHERE available_at <= ? AND token IS NOT NULL AND attempts >= ?"
)

_TO_DEAD = """
INSERT INTO mb_dead (key, job_id, payload, attempts, error, enqueued_at, failed_at)
SELECT key, job_id, payload, attempts, ?, enqueued_at, ? FROM mb_jobs WHERE seq = ? AND token = ?
"""


class SQLiteQueue(ClaimQueue):
    """A durable queue in one SQLite file: ``SQLiteQueue("sqlite:///jobs.db")``.

    WAL mode; jobs are claimed in bulk inside ``BEGIN IMMEDIATE`` under a lease with a
    fresh token, acknowledged in bulk, their attempts counted in the table; jobs that fail
    for good go to a dead-letter table with their last error.  Several worker processes
    may share one file (on a local disk: SQLite locking is unreliable on network file
    systems).  All I/O runs on one private thread, so the event loop never blocks.

    ``serializer`` is ``"json"`` (default) or, opt-in, ``"pickle"``; it is recorded in the
    file and every later opener must use the same.  ``max_payload_bytes`` bounds a job's
    encoded data.  ``lease`` is how long a claim lasts (batchers renew it while a job is
    worked on).  ``synchronous`` is SQLite's setting: ``"NORMAL"`` survives any process
    crash; ``"FULL"`` also survives power loss, at a cost per commit.
    """

    capabilities = QueueCapabilities()

    def __init__(
        self,
        url: str | os.PathLike[str] = "sqlite:///microbatching.db",
        *,
        serializer: str | Serializer = "json",
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float = 30.0,
        busy_timeout: float = 30.0,
        synchronous: str = "NORMAL",
    ) -> None:
        super().__init__(serializer=serializer, max_payload_bytes=max_payload_bytes, lease=lease)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = _path_from_url(url)
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous.upper()
        self._conn: sqlite3.Connection | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLiteQueue {str(self.path)!r} serializer={self.serializer.name}>"

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise MicroBatchingError(f"{self!r} is closed")
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="microbatching-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, func, args)

    def _call(self, func: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn if self._conn is not None else self._connect()
        try:
            return func(conn, *args)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.rollback()
            raise MicroBatchingError(f"SQLite error on {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO mb_meta VALUES ('serializer', ?)", (self.serializer.name,))
        (stored,) = conn.execute("SELECT value FROM mb_meta WHERE name = 'serializer'").fetchone()
        conn.execute("COMMIT")
        if stored != self.serializer.name:
            conn.close()
            raise MicroBatchingError(
                f"{self.path} holds jobs encoded with serializer={stored!r}; open it with the same "
                f"serializer (this queue was given {self.serializer.name!r})"
            )
        self._conn = conn
        return conn

    # -- writing ------------------------------------------------------------------------------

    async def enqueue(self, messages: Sequence[Message]) -> None:
        """Insert ``messages`` in one transaction, ready now."""
        if messages:
            await self._run(_enqueue, [(m.key, m.job_id, m.payload) for m in messages])

    async def claim(self, limit: int, lease: float, max_attempts: int | None = None) -> list[Job[Any]]:
        """Lease up to ``limit`` ready jobs in one ``BEGIN IMMEDIATE`` transaction."""
        if limit < 1:
            return []
        rows = await self._run(_claim, limit, lease, max_attempts)
        return [self.decode(lease_, job_id, payload) for lease_, job_id, payload in rows]

    async def ack(self, jobs: Sequence[Job[Any]]) -> int:
        """Delete finished jobs still held under their lease token."""
        return await self._run(_ack, _refs(jobs)) if jobs else 0

    async def retry(self, jobs: Sequence[Job[Any]], delays: Sequence[float]) -> int:
        """End the leases; each job is ready again after its delay."""
        if not jobs:
            return 0
        if len(delays) != len(jobs):
            raise ValueError(f"retry() needs one delay per job: {len(jobs)} jobs, {len(delays)} delays")
        now = time.time()
        params = [(now + delay, seq, token) for (seq, token), delay in zip(_refs(jobs), delays, strict=True)]
        return await self._run(
            _update, "UPDATE mb_jobs SET token = NULL, available_at = ? WHERE seq = ? AND token = ?", params
        )

    async def release(self, jobs: Sequence[Job[Any]]) -> int:
        """Give back unattempted jobs: ready now, the claim's attempt undone."""
        if not jobs:
            return 0
        now = time.time()
        params = [(now, seq, token) for seq, token in _refs(jobs)]
        return await self._run(
            _update,
            "UPDATE mb_jobs SET token = NULL, available_at = ?, "
            "attempts = MAX(attempts - 1, 0) WHERE seq = ? AND token = ?",
            params,
        )

    async def dead_letter(self, failures: Sequence[tuple[Job[Any], str]]) -> int:
        """Move failed jobs, with their last error, to the ``mb_dead`` table."""
        if not failures:
            return 0
        now = time.time()
        refs = _refs([job for job, _ in failures])
        params = [(error, now, *ref) for ref, (_, error) in zip(refs, failures, strict=True)]
        return await self._run(_dead_letter, params)

    async def extend(self, jobs: Sequence[Job[Any]], lease: float) -> int:
        """Renew leases for ``lease`` seconds from now."""
        if not jobs:
            return 0
        until = time.time() + lease
        params = [(until, seq, token) for seq, token in _refs(jobs)]
        sql = "UPDATE mb_jobs SET available_at = ? WHERE seq = ? AND token = ?"
        return await self._run(_update, sql, params)

    # -- reading and maintenance --------------------------------------------------------------

    async def stats(self) -> QueueStats:
        """Counts by state, and the age of the oldest unfinished job."""
        return await self._run(_stats)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters, decoded."""
        rows = await self._run(_dead_rows, limit)
        return [
            DeadLetter(key, self._loads(job_id), self._loads(payload), attempts, error, failed_at)
            for key, job_id, payload, attempts, error, failed_at in rows
        ]

    def _loads(self, data: bytes) -> Any:
        try:
            return self.serializer.loads(data)
        except Exception:
            return data

    async def requeue_dead(self, keys: Sequence[str] | None = None) -> int:
        """Move dead letters back into the queue, attempts reset to 0."""
        return await self._run(_requeue_dead, None if keys is None else list(keys))

    async def purge_dead(self, keys: Sequence[str] | None = None) -> int:
        """Delete dead letters."""
        return await self._run(_purge_dead, None if keys is None else list(keys))

    async def close(self) -> None:
        """Close the connection and the I/O thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._disconnect)
            thread.shutdown(wait=False)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _path_from_url(url: str | os.PathLike[str]) -> Path:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a plain path."""
    text = os.fspath(url)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme != "sqlite" or not rest.startswith("/") or rest == "/":
            raise ValueError(
                f"not a SQLite queue URL: {text!r}; use sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        text = rest[1:]
    if not text or text == ":memory:":
        raise ValueError("SQLiteQueue needs a file path (an in-memory database is not durable)")
    return Path(text)


def _refs(jobs: Sequence[Job[Any]]) -> list[tuple[int, str]]:
    refs = []
    for job in jobs:
        lease = job.receipt
        if not isinstance(lease, Lease):
            raise ValueError(f"{job!r} was not claimed from a SQLiteQueue (its receipt is {lease!r})")
        refs.append((lease.ref, lease.token))
    return refs


_CHUNK = 500  # bound parameters per statement: old SQLite builds allow 999


def _chunks(seqs: list[int]) -> list[list[int]]:
    return [seqs[i : i + _CHUNK] for i in range(0, len(seqs), _CHUNK)]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _changes(conn: sqlite3.Connection, sql: str, params: list[tuple[Any, ...]]) -> int:
    before = conn.total_changes
    conn.executemany(sql, params)
    return conn.total_changes - before


def _enqueue(conn: sqlite3.Connection, rows: list[tuple[str, bytes, bytes]]) -> None:
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT OR IGNORE INTO mb_jobs (key, job_id, payload, available_at, enqueued_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(key, job_id, payload, now, now) for key, job_id, payload in rows],
    )
    conn.execute("COMMIT")


def _claim(
    conn: sqlite3.Connection, limit: int, lease: float, max_attempts: int | None
) -> list[tuple[Lease, bytes, bytes]]:
    now = time.time()
    # A cheap read first: an idle poll does not take the write lock.
    if conn.execute("SELECT 1 FROM mb_jobs WHERE available_at <= ? LIMIT 1", (now,)).fetchone() is None:
        return []
    conn.execute("BEGIN IMMEDIATE")
    if max_attempts is not None:
        _bury_exhausted(conn, now, max_attempts)
    rows = conn.execute(
        "SELECT seq, key, job_id, payload, attempts, recovered, token FROM mb_jobs "
        "WHERE available_at <= ? ORDER BY available_at, seq LIMIT ?",
        (now, limit),
    ).fetchall()
    token = secrets.token_hex(8)
    # One statement per chunk, not one per job: the old token (set if a lease expired) is
    # read before it is overwritten.
    for seqs in _chunks([row[0] for row in rows]):
        conn.execute(
            "UPDATE mb_jobs SET token = ?, available_at = ?, attempts = attempts + 1, "
            f"recovered = recovered + (token IS NOT NULL) WHERE seq IN ({_marks(len(seqs))})",
            (token, now + lease, *seqs),
        )
    conn.execute("COMMIT")
    return [
        (Lease(key, token, attempts + 1, recovered + (old is not None), seq), job_id, payload)
        for seq, key, job_id, payload, attempts, recovered, old in rows
    ]


def _bury_exhausted(conn: sqlite3.Connection, now: float, max_attempts: int) -> None:
    """Jobs whose lease expired after their last attempt: their consumer died each time."""
    rows = conn.execute(_EXHAUSTED, (now, max_attempts)).fetchall()
    if rows:
        _dead_letter(
            conn,
            [
                (
                    f"WorkerLost: the lease expired during attempt {attempts}: the worker died or stalled "
                    f"while processing this job",
                    now,
                    seq,
                    token,
                )
                for seq, token, attempts in rows
            ],
            transaction=False,
        )


def _ack(conn: sqlite3.Connection, refs: list[tuple[int, str]]) -> int:
    by_token: dict[str, list[int]] = {}
    for seq, token in refs:
        by_token.setdefault(token, []).append(seq)
    conn.execute("BEGIN IMMEDIATE")
    before = conn.total_changes
    for token, all_seqs in by_token.items():  # usually one or two claims' worth
        for seqs in _chunks(all_seqs):
            sql = f"DELETE FROM mb_jobs WHERE token = ? AND seq IN ({_marks(len(seqs))})"
            conn.execute(sql, (token, *seqs))
    done = conn.total_changes - before
    conn.execute("UPDATE mb_meta SET value = CAST(value AS INTEGER) + ? WHERE name = 'done'", (done,))
    conn.execute("COMMIT")
    return done


def _update(conn: sqlite3.Connection, sql: str, params: list[tuple[Any, ...]]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    changed = _changes(conn, sql, params)
    conn.execute("COMMIT")
    return changed


def _dead_letter(conn: sqlite3.Connection, params: list[tuple[Any, ...]], transaction: bool = True) -> int:
    if transaction:
        conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_TO_DEAD, params)
    moved = _changes(conn, "DELETE FROM mb_jobs WHERE seq = ? AND token = ?", [p[2:] for p in params])
    if transaction:
        conn.execute("COMMIT")
    return moved


def _stats(conn: sqlite3.Connection) -> QueueStats:
    now = time.time()
    conn.execute("BEGIN")
    pending, delayed, in_flight, oldest = conn.execute(
        "SELECT COALESCE(SUM(available_at <= ?), 0), COALESCE(SUM(token IS NULL AND available_at > ?), 0), "
        "COALESCE(SUM(token IS NOT NULL AND available_at > ?), 0), MIN(enqueued_at) FROM mb_jobs",
        (now, now, now),
    ).fetchone()
    (done,) = conn.execute("SELECT CAST(value AS INTEGER) FROM mb_meta WHERE name = 'done'").fetchone()
    (dead,) = conn.execute("SELECT COUNT(*) FROM mb_dead").fetchone()
    conn.execute("COMMIT")
    age = None if oldest is None else max(0.0, now - oldest)
    return QueueStats(pending, delayed, in_flight, done, dead, age)


def _dead_rows(conn: sqlite3.Connection, limit: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT key, job_id, payload, attempts, error, failed_at FROM mb_dead ORDER BY seq LIMIT ?", (limit,)
    ).fetchall()


def _where_keys(keys: list[str] | None) -> tuple[str, list[str]]:
    if keys is None:
        return "", []
    return f" WHERE key IN ({', '.join('?' * len(keys))})", keys


def _requeue_dead(conn: sqlite3.Connection, keys: list[str] | None) -> int:
    if keys == []:
        return 0
    where, params = _where_keys(keys)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT OR IGNORE INTO mb_jobs (key, job_id, payload, available_at, enqueued_at) "
        f"SELECT key, job_id, payload, ?, ? FROM mb_dead{where}",
        [now, now, *params],
    )
    moved = conn.execute(f"DELETE FROM mb_dead{where}", params).rowcount
    conn.execute("COMMIT")
    return moved


def _purge_dead(conn: sqlite3.Connection, keys: list[str] | None) -> int:
    if keys == []:
        return 0
    where, params = _where_keys(keys)
    conn.execute("BEGIN IMMEDIATE")
    purged = conn.execute(f"DELETE FROM mb_dead{where}", params).rowcount
    conn.execute("COMMIT")
    return purged
