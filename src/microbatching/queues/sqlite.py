"""SQLiteQueue: the embedded durable queue (one file, WAL, several worker processes)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .._validate import one_of, seconds
from ..errors import InvalidQueueError
from ._base import ClaimQueue
from ._registry import resolve_options
from ._serialization import DEFAULT_MAX_PAYLOAD_BYTES, Serializer
from ._table import DEAD_COLUMNS, JOB_COLUMNS, SCHEMA_VERSION, JobTable, claimed_row, queue_stats, worker_lost
from ._types import Claimed, Lease, Message, QueueCapabilities, QueueStats, StoredDeadLetter, WorkerInfo

__all__ = ["SQLiteQueue"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {jobs} (
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
CREATE INDEX IF NOT EXISTS {jobs}_available ON {jobs} (available_at);
-- Leased jobs only: finding expired leases at each claim must not scan every ready job.
CREATE INDEX IF NOT EXISTS {jobs}_leased ON {jobs} (available_at) WHERE token IS NOT NULL;
CREATE TABLE IF NOT EXISTS {dead} (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    key          TEXT    NOT NULL,
    job_id       BLOB    NOT NULL,
    payload      BLOB    NOT NULL,
    attempts     INTEGER NOT NULL,
    error        TEXT    NOT NULL,
    traceback    TEXT,
    enqueued_at  REAL    NOT NULL,
    failed_at    REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS {meta} (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO {meta} VALUES ('done', '0');
"""
# Live workers: one row each, rewritten at every heartbeat, deleted when the worker stops.
_WORKERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS {workers} (
    id           TEXT    PRIMARY KEY,
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    processor    TEXT    NOT NULL,
    started_at   REAL    NOT NULL,
    last_seen    REAL    NOT NULL,
    done         INTEGER NOT NULL,
    failed       INTEGER NOT NULL
);
"""

# Expired leases after the last attempt; answered from the small leased-jobs index.
_EXHAUSTED = (
    "SELECT seq, token, attempts FROM {jobs} WHERE available_at <= ? AND token IS NOT NULL AND attempts >= ?"
)
_CHUNK = 500  # bound parameters per statement: old SQLite builds allow 999
_FORGET_WORKERS_AFTER = 86400.0  # rows of workers killed without saying goodbye, pruned a day on
#: The options a URL's query may carry, with their types and defaults.
_OPTIONS: dict[str, tuple[type, Any]] = {"serializer": (str, "json"), "lease": (float, 30.0),
            "busy_timeout": (float, 30.0), "synchronous": (str, "NORMAL"), "name": (str, "mb")}  # fmt: skip


class SQLiteQueue(ClaimQueue):
    """A durable queue in one SQLite file: ``SQLiteQueue("sqlite:///jobs.db")`` (or a plain path).

    WAL mode; jobs are claimed in bulk inside ``BEGIN IMMEDIATE`` under a lease with a
    fresh token, acknowledged in bulk, their attempts counted in the table; jobs that fail
    for good go to a dead-letter table with their last error and traceback.  Several
    worker processes may share one file (on a local disk: SQLite locking is unreliable on
    network file systems).  All I/O runs on one private thread, so the event loop never
    blocks.

    ``serializer`` is ``"json"`` (default) or, opt-in, ``"pickle"``; it is recorded in the
    file and every later opener must use the same.  ``max_payload_bytes`` bounds a job's
    encoded data.  ``lease`` is how long a claim lasts (batchers renew it while a job is
    worked on).  ``synchronous`` is SQLite's setting: ``"NORMAL"`` survives any process
    crash; ``"FULL"`` also survives power loss, at a cost per commit.  ``name`` picks the
    tables (``<name>_jobs``, ``<name>_dead``, ``<name>_meta``, ``<name>_workers``), so one
    file can hold several queues.  Workers' heartbeats go to ``<name>_workers``, which
    ``microbatching stats`` lists.  With
    ``create=False`` nothing is created or changed: a missing file or one that is not a
    queue raises :class:`~microbatching.errors.InvalidQueueError`.  Options may also be
    given in the URL's query: ``sqlite:///jobs.db?lease=60``.
    """

    capabilities = QueueCapabilities()
    client_errors = (sqlite3.Error,)

    def __init__(
        self,
        url: str | os.PathLike[str] = "sqlite:///microbatching.db",
        *,
        serializer: str | Serializer | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float | None = None,
        busy_timeout: float | None = None,
        synchronous: str | None = None,
        name: str | None = None,
        create: bool = True,
    ) -> None:
        text = os.fspath(url)
        given = {"serializer": serializer, "lease": lease, "busy_timeout": busy_timeout,
                 "synchronous": synchronous, "name": name}  # fmt: skip
        options = resolve_options(text, _OPTIONS, given)
        super().__init__(
            serializer=options["serializer"],
            max_payload_bytes=max_payload_bytes,
            lease=options["lease"],
            create=create,
        )
        synchronous = one_of("synchronous", options["synchronous"], ("OFF", "NORMAL", "FULL", "EXTRA"))
        self.url = text
        self.path = _path_from_url(text)
        self.table = JobTable(options["name"])
        self._busy_timeout = seconds("busy_timeout", options["busy_timeout"])
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"<SQLiteQueue {str(self.path)!r} serializer={self.serializer.name}>"

    def _clone(self) -> SQLiteQueue:
        return SQLiteQueue(
            self.path, serializer=self.serializer, max_payload_bytes=self.max_payload_bytes, lease=self.lease,
            busy_timeout=self._busy_timeout, synchronous=self._synchronous, name=self.table.name,
            create=self.create,
        )  # fmt: skip

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="microbatching-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._on_thread, func, args)

    def _on_thread(self, func: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn if self._conn is not None else self._connect()
        try:
            return func(conn, self.table, *args)
        except sqlite3.Error:
            if conn.in_transaction:
                conn.rollback()
            raise

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = self._open()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise InvalidQueueError(f"{self.path} is not a usable SQLite queue: {exc}") from None
        self._conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        if self.create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        elif not self.path.is_file():
            raise InvalidQueueError(f"no queue at {self.path}: the file does not exist")
        else:  # mode=rw: never creates the file
            uri = f"{self.path.resolve().as_uri()}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout, isolation_level=None)
        try:
            # Checked before anything is written: a file that is not a database, or holds
            # tables of that name that are not a queue's, is left exactly as it was.
            self._check_schema(conn, missing_ok=self.create)
            if self.create:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                _create_schema(conn, self.table, self.serializer.name)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection, missing_ok: bool) -> None:
        table = self.table
        for name, wanted in ((table.jobs, JOB_COLUMNS), (table.dead, DEAD_COLUMNS)):
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({name})")}
            if not columns and missing_ok:
                continue
            if not columns:
                raise InvalidQueueError(f"{self.path} holds no queue named {table.name!r} (no {name} table)")
            lacking = set(wanted) - columns - {"traceback"}  # added by a later schema version
            if lacking:
                raise InvalidQueueError(
                    f"{self.path} has a table {name} that is not a microbatching queue's "
                    f"(it lacks {', '.join(sorted(lacking))})"
                )
        meta = conn.execute(f"SELECT 1 FROM sqlite_master WHERE name = '{table.meta}'").fetchone()
        row = meta and conn.execute(f"SELECT value FROM {table.meta} WHERE name = 'serializer'").fetchone()
        if row and row[0] != self.serializer.name:
            raise InvalidQueueError(
                f"{self.path} holds jobs encoded with serializer={row[0]!r}; open it with the same "
                f"serializer (this queue was given {self.serializer.name!r})"
            )

    # -- the primitives ---------------------------------------------------------------------

    async def _enqueue(self, messages: list[Message]) -> int:
        return await self._run(_enqueue, [(m.key, m.job_id, m.payload, m.delay) for m in messages])

    async def _claim(self, limit: int, lease: float, max_attempts: int | None, wait: float) -> list[Claimed]:
        return await self._run(_claim, limit, lease, max_attempts)

    async def _ack(self, leases: list[Lease]) -> int:
        return await self._run(_ack, _refs(leases))

    async def _retry(self, leases: list[Lease], delays: list[float]) -> int:
        now = time.time()
        pairs = zip(_refs(leases), delays, strict=True)
        params = [(now + delay, seq, token) for (seq, token), delay in pairs]
        sql = "UPDATE {jobs} SET token = NULL, available_at = ? WHERE seq = ? AND token = ?"
        return await self._run(_update, sql, params)

    async def _release(self, leases: list[Lease]) -> int:
        now = time.time()
        sql = (
            "UPDATE {jobs} SET token = NULL, available_at = ?, attempts = MAX(attempts - 1, 0) "
            "WHERE seq = ? AND token = ?"
        )
        return await self._run(_update, sql, [(now, seq, token) for seq, token in _refs(leases)])

    async def _dead_letter(self, entries: list[tuple[Lease, str, str | None]]) -> int:
        now = time.time()
        return await self._run(
            _dead_letter, [(error, trace, now, lease.ref, lease.token) for lease, error, trace in entries]
        )

    async def _extend(self, leases: list[Lease], lease: float) -> int:
        until = time.time() + lease
        params = [(until, seq, token) for seq, token in _refs(leases)]
        return await self._run(
            _update, "UPDATE {jobs} SET available_at = ? WHERE seq = ? AND token = ?", params
        )

    async def _stats(self) -> QueueStats:
        return await self._run(_stats)

    async def _dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        return [StoredDeadLetter(*row) for row in await self._run(_dead_rows, limit)]

    async def _requeue_dead(self, keys: list[str] | None) -> int:
        return await self._run(_requeue_dead, keys)

    async def _purge_dead(self, keys: list[str] | None) -> int:
        return await self._run(_purge_dead, keys)

    async def _heartbeat(self, worker: WorkerInfo) -> bool:
        return await self._run(_heartbeat, worker)

    async def _forget_worker(self, worker_id: str) -> None:
        await self._run(_forget_worker, worker_id)

    async def _workers(self, max_age: float) -> list[WorkerInfo] | None:
        return await self._run(_workers, max_age)

    async def _drop(self) -> None:
        await self._run(_drop)

    async def _close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._disconnect)
            thread.shutdown(wait=False)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _path_from_url(text: str) -> Path:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a plain path (the query is options)."""
    if "://" in text:
        scheme, _, rest = text.partition("://")
        rest = rest.split("?", 1)[0]
        if scheme != "sqlite" or not rest.startswith("/") or rest == "/":
            raise ValueError(
                "not a SQLite queue URL: use sqlite:///relative/path.db, sqlite:////absolute/path.db "
                "or a plain file path"
            )
        text = rest[1:]
    if not text or text == ":memory:":
        raise ValueError("SQLiteQueue needs a file path (an in-memory database is not durable)")
    return Path(text)


def _refs(leases: list[Lease]) -> list[tuple[int, str]]:
    return [(lease.ref, lease.token) for lease in leases]


def _chunks(seqs: list[int]) -> list[list[int]]:
    return [seqs[i : i + _CHUNK] for i in range(0, len(seqs), _CHUNK)]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _create_schema(conn: sqlite3.Connection, table: JobTable, serializer: str) -> None:
    """Create the tables (or bring an older file's up to date) in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        schema = _SCHEMA.format(jobs=table.jobs, dead=table.dead, meta=table.meta)
        schema += _WORKERS_SCHEMA.format(workers=_workers_table(table))
        for statement in schema.split(";"):
            if statement.strip():
                conn.execute(statement)
        dead_columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table.dead})")}
        if "traceback" not in dead_columns:  # a file from before the traceback column
            conn.execute(f"ALTER TABLE {table.dead} ADD COLUMN traceback TEXT")
        conn.execute(f"INSERT OR REPLACE INTO {table.meta} VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        conn.execute(f"INSERT OR IGNORE INTO {table.meta} VALUES ('serializer', ?)", (serializer,))
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise


def _enqueue(conn: sqlite3.Connection, table: JobTable, rows: list[tuple[str, bytes, bytes, float]]) -> int:
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    before = conn.total_changes
    conn.executemany(
        f"INSERT OR IGNORE INTO {table.jobs} (key, job_id, payload, available_at, enqueued_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(key, job_id, payload, now + delay, now) for key, job_id, payload, delay in rows],
    )
    stored = conn.total_changes - before
    conn.execute("COMMIT")
    return stored


def _claim(
    conn: sqlite3.Connection, table: JobTable, limit: int, lease: float, max_attempts: int | None
) -> list[Claimed]:
    now = time.time()
    # A cheap read first: an idle poll does not take the write lock.
    ready = conn.execute(f"SELECT 1 FROM {table.jobs} WHERE available_at <= ? LIMIT 1", (now,)).fetchone()
    if ready is None:
        return []
    conn.execute("BEGIN IMMEDIATE")
    if max_attempts is not None:
        _bury_exhausted(conn, table, now, max_attempts)
    rows = conn.execute(
        f"SELECT seq, key, job_id, payload, attempts, recovered, token FROM {table.jobs} "
        "WHERE available_at <= ? ORDER BY available_at, seq LIMIT ?",
        (now, limit),
    ).fetchall()
    token = secrets.token_hex(8)
    # One statement per chunk, not one per job: the old token (set if a lease expired) is
    # read before it is overwritten.
    for seqs in _chunks([row[0] for row in rows]):
        conn.execute(
            f"UPDATE {table.jobs} SET token = ?, available_at = ?, attempts = attempts + 1, "
            f"recovered = recovered + (token IS NOT NULL) WHERE seq IN ({_marks(len(seqs))})",
            (token, now + lease, *seqs),
        )
    conn.execute("COMMIT")
    return [claimed_row(row, token) for row in rows]


def _bury_exhausted(conn: sqlite3.Connection, table: JobTable, now: float, max_attempts: int) -> None:
    """Jobs whose lease expired after their last attempt: their consumer died each time."""
    rows = conn.execute(_EXHAUSTED.format(jobs=table.jobs), (now, max_attempts)).fetchall()
    if rows:
        params = [(worker_lost(attempts), None, now, seq, token) for seq, token, attempts in rows]
        _dead_letter(conn, table, params, transaction=False)


def _ack(conn: sqlite3.Connection, table: JobTable, refs: list[tuple[int, str]]) -> int:
    by_token: dict[str, list[int]] = {}
    for seq, token in refs:
        by_token.setdefault(token, []).append(seq)
    conn.execute("BEGIN IMMEDIATE")
    before = conn.total_changes
    for token, all_seqs in by_token.items():  # usually one or two claims' worth
        for seqs in _chunks(all_seqs):
            conn.execute(
                f"DELETE FROM {table.jobs} WHERE token = ? AND seq IN ({_marks(len(seqs))})", (token, *seqs)
            )
    done = conn.total_changes - before
    conn.execute(f"UPDATE {table.meta} SET value = CAST(value AS INTEGER) + ? WHERE name = 'done'", (done,))
    conn.execute("COMMIT")
    return done


def _update(conn: sqlite3.Connection, table: JobTable, sql: str, params: list[tuple[Any, ...]]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    before = conn.total_changes
    conn.executemany(sql.format(jobs=table.jobs), params)
    changed = conn.total_changes - before
    conn.execute("COMMIT")
    return changed


def _dead_letter(
    conn: sqlite3.Connection, table: JobTable, params: list[tuple[Any, ...]], transaction: bool = True
) -> int:
    """Move rows ``(error, traceback, failed_at, seq, token)`` to the dead letters."""
    if transaction:
        conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        f"INSERT INTO {table.dead} "
        "(key, job_id, payload, attempts, error, traceback, enqueued_at, failed_at) "
        "SELECT key, job_id, payload, attempts, ?, ?, enqueued_at, ? "
        f"FROM {table.jobs} WHERE seq = ? AND token = ?",
        params,
    )
    before = conn.total_changes
    conn.executemany(f"DELETE FROM {table.jobs} WHERE seq = ? AND token = ?", [p[3:] for p in params])
    moved = conn.total_changes - before
    if transaction:
        conn.execute("COMMIT")
    return moved


def _stats(conn: sqlite3.Connection, table: JobTable) -> QueueStats:
    now = time.time()
    conn.execute("BEGIN")
    pending, delayed, in_flight, oldest = conn.execute(
        "SELECT COALESCE(SUM(available_at <= ?), 0), COALESCE(SUM(token IS NULL AND available_at > ?), 0), "
        f"COALESCE(SUM(token IS NOT NULL AND available_at > ?), 0), MIN(enqueued_at) FROM {table.jobs}",
        (now, now, now),
    ).fetchone()
    (done,) = conn.execute(f"SELECT CAST(value AS INTEGER) FROM {table.meta} WHERE name = 'done'").fetchone()
    (dead,) = conn.execute(f"SELECT COUNT(*) FROM {table.dead}").fetchone()
    conn.execute("COMMIT")
    return queue_stats(pending, delayed, in_flight, done, dead, oldest, now)


def _dead_rows(conn: sqlite3.Connection, table: JobTable, limit: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        f"SELECT key, job_id, payload, attempts, error, failed_at, traceback FROM {table.dead} "
        "ORDER BY seq LIMIT ?",
        (limit,),
    ).fetchall()


def _where_keys(keys: list[str] | None) -> tuple[str, list[str]]:
    if keys is None:
        return "", []
    return f" WHERE key IN ({_marks(len(keys))})", keys


def _requeue_dead(conn: sqlite3.Connection, table: JobTable, keys: list[str] | None) -> int:
    where, params = _where_keys(keys)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        f"INSERT OR IGNORE INTO {table.jobs} (key, job_id, payload, available_at, enqueued_at) "
        f"SELECT key, job_id, payload, ?, ? FROM {table.dead}{where}",
        [now, now, *params],
    )
    moved = conn.execute(f"DELETE FROM {table.dead}{where}", params).rowcount
    conn.execute("COMMIT")
    return moved


def _purge_dead(conn: sqlite3.Connection, table: JobTable, keys: list[str] | None) -> int:
    where, params = _where_keys(keys)
    conn.execute("BEGIN IMMEDIATE")
    purged = conn.execute(f"DELETE FROM {table.dead}{where}", params).rowcount
    conn.execute("COMMIT")
    return purged


def _workers_table(table: JobTable) -> str:
    return f"{table.name}_workers"


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return found.fetchone() is not None


def _heartbeat(conn: sqlite3.Connection, table: JobTable, worker: WorkerInfo) -> bool:
    workers = _workers_table(table)
    if not _has_table(conn, workers):  # a file opened with create=False, from before the table
        return False
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        f"INSERT OR REPLACE INTO {workers} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (worker.id, worker.host, worker.pid, worker.processor, worker.started_at, worker.last_seen,
         worker.done, worker.failed),
    )  # fmt: skip
    conn.execute(f"DELETE FROM {workers} WHERE last_seen < ?", (time.time() - _FORGET_WORKERS_AFTER,))
    conn.execute("COMMIT")
    return True


def _forget_worker(conn: sqlite3.Connection, table: JobTable, worker_id: str) -> None:
    workers = _workers_table(table)
    if _has_table(conn, workers):
        conn.execute(f"DELETE FROM {workers} WHERE id = ?", (worker_id,))


def _workers(conn: sqlite3.Connection, table: JobTable, max_age: float) -> list[WorkerInfo]:
    workers = _workers_table(table)
    if not _has_table(conn, workers):
        return []
    rows = conn.execute(
        "SELECT id, host, pid, processor, started_at, last_seen, done, failed "
        f"FROM {workers} WHERE last_seen >= ? ORDER BY started_at, id",
        (time.time() - max_age,),
    ).fetchall()
    return [WorkerInfo(*row) for row in rows]


def _drop(conn: sqlite3.Connection, table: JobTable) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for name in (table.jobs, table.dead, table.meta, _workers_table(table)):
        conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute("COMMIT")
