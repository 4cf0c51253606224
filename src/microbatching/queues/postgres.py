"""PostgresQueue: a durable queue in PostgreSQL tables, claimed with ``FOR UPDATE SKIP LOCKED`` (asyncpg)."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ..errors import InvalidQueueError, QueueError
from ._base import ClaimQueue
from ._pgsql import DONE_SHARDS, SCHEMA_MARK, Statements, advisory_key, for_psycopg, quote
from ._registry import redact, resolve_options, scrub
from ._serialization import DEFAULT_MAX_PAYLOAD_BYTES, Serializer
from ._table import _NAME, SCHEMA_VERSION, WORKER_LOST, JobTable, claimed_row, queue_stats
from ._types import Claimed, Lease, Message, QueueCapabilities, QueueStats, StoredDeadLetter

__all__ = ["PostgresQueue"]

T = TypeVar("T")
logger = logging.getLogger("microbatching")

#: The options a URL's query may carry (the rest of the query goes to the server's connection).
_OPTIONS: dict[str, tuple[type, Any]] = {
    "serializer": (str, "json"),
    "lease": (float, 30.0),
    "name": (str, "mb"),
    "schema": (str, "public"),
    "poll": (float, 5.0),
    "pool_size": (int, 4),
    "connect_timeout": (float, 10.0),
    "reconnect_timeout": (float, 30.0),
    "vacuum_every": (int, 25_000),
}
_FIRST_BACKOFF = 0.05
_LAST_BACKOFF = 2.0
#: How often a waiting claim looks for work when it cannot listen for notifications.
_UNLISTENED_POLL = 0.25
_CLOSE_TIMEOUT = 5.0
#: Session settings of the pooled connections.  A queue table is often empty when it is
#: analyzed or vacuumed, and a planner believing it still is would read the whole table
#: with a sequential scan in every settle, or gather every ready job with a bitmap scan and
#: sort them in every claim.  With these off the claim walks its index from the oldest
#: ready job and settles look their rows up by id: a batch costs its size, whatever the
#: table holds and whatever the statistics say.  The operator's statements (stats, dead
#: letters) get the planner's defaults back for their transaction.
PLANNER_SETTINGS = {"enable_seqscan": "off", "enable_bitmapscan": "off"}
_DEFAULT_PLANNER = "SELECT " + ", ".join(f"set_config('{name}', 'on', true)" for name in PLANNER_SETTINGS)
# VACUUM needs the table's owner, the database's owner or a superuser (PostgreSQL 15).
_MAY_VACUUM = """
SELECT pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE')
       OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
FROM pg_class AS c, pg_database AS d
WHERE c.oid = $1::regclass AND d.datname = current_database()
"""


class PostgresQueue(ClaimQueue):
    """A durable queue in PostgreSQL: ``PostgresQueue("postgresql://user@host/db?name=emails")``.

    Jobs live in ``<name>_jobs`` (in ``schema``, default ``public``), are claimed in bulk by
    one statement (``FOR UPDATE SKIP LOCKED``: concurrent workers never wait for each other)
    that sets a fresh lease token, the lease deadline on the server's clock and the attempt
    count, and are acknowledged, retried and dead-lettered in bulk, each checked against its
    token.  Finished jobs are deleted; failed ones move to ``<name>_dead`` with their last
    error and traceback.  Idle workers sleep on ``LISTEN``: every enqueue notifies them, and
    they also look every ``poll`` seconds, and when a delayed job or an expired lease is due.

    The URL follows libpq (``postgresql://user:password@host:port/dbname?sslmode=require``);
    its query may also carry this queue's options: ``name``, ``schema``, ``lease``,
    ``serializer``, ``poll``, ``pool_size`` (connections per handle, besides the one that
    listens), ``connect_timeout``, ``reconnect_timeout`` (how long an operation keeps
    reconnecting after the server went away before it fails) and ``vacuum_every`` (after
    claiming that many jobs a handle runs ``VACUUM`` on the jobs table, so it stays small
    even where autovacuum is off or slow; 0 leaves it to autovacuum).  Any other query parameter is
    sent to the server as a setting (``application_name``, ``options``, ...).  The tables
    are created on first use (under an advisory lock, versioned); with ``create=False``
    nothing is created and a missing queue raises :class:`~microbatching.errors.InvalidQueueError`.

    ``put``/``aput`` (and ``put_many``/``aput_many``) accept ``connection=``: an asyncpg
    connection or a psycopg connection the caller holds, so a job is stored in the caller's
    transaction (a rollback stores no job; workers are woken at commit).
    """

    capabilities = QueueCapabilities(blocking_claim=True)
    client_errors = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
                     asyncio.TimeoutError)  # fmt: skip

    def __init__(
        self,
        url: str,
        *,
        serializer: str | Serializer | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float | None = None,
        name: str | None = None,
        schema: str | None = None,
        poll: float | None = None,
        pool_size: int | None = None,
        connect_timeout: float | None = None,
        reconnect_timeout: float | None = None,
        vacuum_every: int | None = None,
        create: bool = True,
    ) -> None:
        given = {"serializer": serializer, "lease": lease, "name": name, "schema": schema, "poll": poll,
                 "pool_size": pool_size, "connect_timeout": connect_timeout,
                 "reconnect_timeout": reconnect_timeout, "vacuum_every": vacuum_every}  # fmt: skip
        ours, dsn, libpq = _split_url(url)
        options = resolve_options(ours, _OPTIONS, given)
        super().__init__(
            serializer=options["serializer"],
            max_payload_bytes=max_payload_bytes,
            lease=options["lease"],
            create=create,
        )
        self.url = url
        self.table = JobTable(options["name"])
        self.schema = _schema_name(options["schema"])
        self.poll = _positive("poll", options["poll"])
        self.pool_size = _count("pool_size", options["pool_size"], minimum=1)
        self.vacuum_every = _count("vacuum_every", options["vacuum_every"], minimum=0)
        self.connect_timeout = _positive("connect_timeout", options["connect_timeout"])
        self.reconnect_timeout = _positive("reconnect_timeout", options["reconnect_timeout"], zero=True)
        self._options = options
        self._dsn = dsn
        # Named in pg_stat_activity (unless the URL names it): an operator sees whose connections these are.
        self._settings = (
            {}
            if "application_name" in libpq
            else {"application_name": f"microbatching {self.schema}.{self.table.name}"}
        )
        self.sql = Statements(self.schema, self.table)
        #: The notification channel enqueues wake idle workers on.
        self.channel = f"microbatching:{self.schema}.{self.table.name}"
        self._pool: asyncpg.Pool | None = None
        self._prepared = False
        self._preparing: asyncio.Lock | None = None
        self._settling: asyncio.Lock | None = None
        self._listener: asyncpg.Connection | None = None
        self._listen_after = 0.0
        self._wake: asyncio.Event | None = None
        self._down_since: float | None = None
        #: Until when (monotonic) an idle claim need not look: the last empty claim found
        #: nothing due before then, and no notification came since.  Anything that makes a
        #: job ready sooner (an enqueue, a retry, a release, a requeue) notifies.
        self._quiet_until: float | None = None
        self._claimed_since_vacuum = 0
        self._vacuuming: asyncio.Task[None] | None = None
        self._may_vacuum: bool | None = None  # unknown until checked

    def __repr__(self) -> str:
        return f"<PostgresQueue {redact(self.url)!r} {self.schema}.{self.table.name}>"

    def _clone(self) -> PostgresQueue:
        options = {key: value for key, value in self._options.items() if key != "serializer"}
        return PostgresQueue(
            self._plain_url(), serializer=self.serializer, max_payload_bytes=self.max_payload_bytes,
            create=self.create, **options,
        )  # fmt: skip

    def _plain_url(self) -> str:
        """The URL without this queue's options (they are passed as arguments instead)."""
        parts = urlsplit(self.url)
        kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _OPTIONS]
        return urlunsplit(parts._replace(query=urlencode(kept)))

    # -- connections ----------------------------------------------------------------------------

    async def _run(self, work: Callable[[Any], Awaitable[T]], *, repeatable: bool = True,
                   prepare: bool = True) -> T:  # fmt: skip
        """``work(connection)`` on a pooled connection, reconnecting with backoff while the server is away.

        A failure to connect is always retried (nothing was sent), for up to
        ``reconnect_timeout``.  A connection lost while a statement ran is retried only
        when ``repeatable``: running the statement twice must do no harm (an enqueue of the
        same keys, a claim, a lease renewal).  A settle is not repeated, so the count it
        returns stays exact; its jobs come back when their leases run out.
        """
        pause, deadline = _FIRST_BACKOFF, time.monotonic() + self.reconnect_timeout
        while True:
            sent = False
            try:
                pool = await self._connected(prepare)
                async with pool.acquire() as conn:
                    sent = True
                    result = await work(conn)
            except Exception as exc:
                if not _connection_lost(exc):
                    raise
                self._lost(exc)
                left = deadline - time.monotonic()
                if (sent and not repeatable and not _refused_unsent(exc)) or left <= 0:
                    raise
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, _LAST_BACKOFF)
                continue
            self._back()
            return result

    async def _connected(self, prepare: bool) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = asyncpg.create_pool(
                self._dsn, min_size=0, max_size=self.pool_size, timeout=self.connect_timeout,
                server_settings={**self._settings, **PLANNER_SETTINGS}, max_inactive_connection_lifetime=60.0,
                reset=_keep_session,
            )  # fmt: skip
            await self._pool  # with min_size=0 this opens no connection yet
        if prepare and not self._prepared:
            if self._preparing is None:
                self._preparing = asyncio.Lock()
            async with self._preparing:
                if not self._prepared:
                    async with self._pool.acquire() as conn:
                        await self._prepare(conn)
                    self._prepared = True
        return self._pool

    def _lost(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "%r: lost the connection to the server (%s); reconnecting",
                self,
                scrub(f"{type(exc).__name__}: {exc}", self.url),
            )

    def _back(self) -> None:
        if self._down_since is not None:
            logger.warning("%r: reconnected after %.1f s", self, time.monotonic() - self._down_since)
            self._down_since = None

    # -- the schema ---------------------------------------------------------------------------

    async def _prepare(self, conn: asyncpg.Connection) -> None:
        """Check the queue's tables (creating or migrating them if allowed) and its serializer."""
        version, serializer = await self._read_meta(conn)
        if version != SCHEMA_VERSION:
            if not self.create and version is None:
                raise InvalidQueueError(
                    f"{self!r}: no queue named {self.table.name!r} in schema {self.schema!r} (no "
                    f"{self.table.meta} table); it is created on first use without create=False"
                )
            if version is not None and version > SCHEMA_VERSION:
                raise InvalidQueueError(
                    f"{self!r}: the queue's tables are at schema version {version}, newer than this "
                    f"microbatching knows ({SCHEMA_VERSION}); upgrade microbatching"
                )
            if not self.create:
                raise InvalidQueueError(
                    f"{self!r}: the queue's tables are at schema version {version} and need migrating "
                    f"to {SCHEMA_VERSION}; open it once without create=False"
                )
            serializer = await self._migrate(conn)
        if serializer is not None and serializer != self.serializer.name:
            raise InvalidQueueError(
                f"{self!r} holds jobs encoded with serializer={serializer!r}; open it with the same "
                f"serializer (this queue was given {self.serializer.name!r})"
            )

    async def _read_meta(self, conn: asyncpg.Connection) -> tuple[int | None, str | None]:
        sql = self.sql
        jobs, meta = await conn.fetchrow("SELECT to_regclass($1), to_regclass($2)", sql.jobs, sql.meta)
        if meta is None:
            if jobs is not None:
                raise InvalidQueueError(
                    f"{self!r}: a table {self.schema}.{self.table.jobs} exists and is not a microbatching "
                    f"queue's (there is no {self.table.meta} beside it)"
                )
            return None, None
        rows = dict(
            await conn.fetch(f"SELECT name, value FROM {sql.meta} WHERE name IN ('schema', 'serializer')")
        )
        return int(rows.get("schema") or 0), rows.get("serializer")

    async def _migrate(self, conn: asyncpg.Connection) -> str | None:
        """Bring the tables to the current version in one transaction, under the schema's advisory lock.

        Several workers starting at once all get here; the lock lets one create the tables
        while the others wait, then find them made.
        """
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key(self.schema))
            exists = await conn.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", self.schema)
            if not exists:
                await conn.execute(f"CREATE SCHEMA {quote(self.schema)}")
                await conn.execute(f"COMMENT ON SCHEMA {quote(self.schema)} IS '{SCHEMA_MARK}'")
            version, serializer = await self._read_meta(conn)
            for step, statements in self.sql.migrations:
                if step > (version or 0):
                    for statement in statements:
                        await conn.execute(statement)
            meta = self.sql.meta
            await conn.execute(
                f"INSERT INTO {meta} (name, value) VALUES ('schema', $1) "
                "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                str(SCHEMA_VERSION),
            )
            await conn.execute(
                f"INSERT INTO {meta} (name, value) VALUES ('serializer', $1) ON CONFLICT (name) DO NOTHING",
                self.serializer.name,
            )
        return serializer

    # -- waking idle claims ---------------------------------------------------------------------

    async def _listening(self) -> bool:
        """Whether enqueue notifications reach this handle (LISTEN on a connection of its own)."""
        if self._listener is not None and not self._listener.is_closed():
            return True
        if time.monotonic() < self._listen_after:
            return False
        try:
            listener = await self._listen()
        except Exception as exc:
            if not _connection_lost(exc):
                raise
            self._lost(exc)
            self._listen_after = time.monotonic() + 1.0
            return False
        listener.add_termination_listener(self._listener_lost)
        self._listener = listener
        return True

    async def _listen(self) -> asyncpg.Connection:
        listener = await asyncpg.connect(
            self._dsn, timeout=self.connect_timeout, server_settings=self._settings
        )
        try:
            await listener.add_listener(self.channel, self._notified)
        except BaseException:
            listener.terminate()
            raise
        return listener

    def _wake_event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def _notified(self, *_: Any) -> None:
        self._quiet_until = None
        if self._wake is not None:
            self._wake.set()

    def _listener_lost(self, *_: Any) -> None:
        self._listener = None
        self._notified()  # the waiting claim looks again (and listens again) at once

    # -- the primitives -------------------------------------------------------------------------

    async def _enqueue(self, messages: list[Message]) -> int:
        args = _enqueue_args(messages, self.channel)

        async def work(conn: asyncpg.Connection) -> int:
            stored: int = await conn.fetchval(self.sql.enqueue, *args)
            return stored

        return await self._run(work)

    async def _claim(self, limit: int, lease: float, max_attempts: int | None, wait: float) -> list[Claimed]:
        if wait <= 0:
            return (await self._claim_once(limit, lease, max_attempts, due=False))[0]
        deadline = time.monotonic() + wait
        wake = self._wake_event()
        while True:
            listening = await self._listening()
            wake.clear()  # before looking: a notification after the look is not missed
            rows, due = await self._look(limit, lease, max_attempts, listening, wake)
            left = deadline - time.monotonic()
            if rows or left <= 0:
                return rows
            pause = min(left, self.poll if listening else _UNLISTENED_POLL)
            if due is not None:
                pause = min(pause, max(due, 0.001))
            try:
                await asyncio.wait_for(wake.wait(), pause)
            except asyncio.TimeoutError:
                pass

    async def _look(
        self, limit: int, lease: float, max_attempts: int | None, listening: bool, wake: asyncio.Event
    ) -> tuple[list[Claimed], float | None]:
        """An idle claim's look for work: a claim, unless nothing can be due yet.

        After an empty claim, while notifications arrive, nothing can become ready before
        the next job is due (or the safety-net ``poll`` is over) without a notification:
        an idle worker sends no statement until then.
        """
        quiet = self._quiet_until
        if listening and quiet is not None and time.monotonic() < quiet:
            return [], quiet - time.monotonic()
        rows, due = await self._claim_once(limit, lease, max_attempts, due=True)
        if not rows and listening and not wake.is_set():
            self._quiet_until = time.monotonic() + (self.poll if due is None else min(self.poll, due))
        return rows, due

    async def _claim_once(
        self, limit: int, lease: float, max_attempts: int | None, *, due: bool
    ) -> tuple[list[Claimed], float | None]:
        token = secrets.token_hex(8)
        attempts = 2**31 - 1 if max_attempts is None else max_attempts

        async def work(conn: asyncpg.Connection) -> tuple[list[Claimed], float | None]:
            rows = await conn.fetch(self.sql.claim, limit, token, lease, attempts, WORKER_LOST)
            if rows or not due:
                self._count_claimed(len(rows))
                return [claimed_row(row, token) for row in rows], None
            return [], await conn.fetchval(self.sql.next_due)

        return await self._run(work)  # a lost claim's jobs come back when its lease runs out

    # -- keeping the jobs table small -----------------------------------------------------------

    def _count_claimed(self, claimed: int) -> None:
        """Start a background VACUUM once this handle claimed ``vacuum_every`` jobs since the last."""
        if not self.vacuum_every or self._may_vacuum is False:
            return
        self._claimed_since_vacuum += claimed
        if self._claimed_since_vacuum >= self.vacuum_every and (
            self._vacuuming is None or self._vacuuming.done()
        ):
            self._claimed_since_vacuum = 0
            self._vacuuming = asyncio.get_running_loop().create_task(self._vacuum())

    async def _vacuum(self) -> None:
        """Reclaim the rows claims and settles left dead, and their index entries.

        Every claimed job leaves two dead row versions (the claim's update, the final
        delete) and their index entries; until they are vacuumed, each claim steps over
        them.  ``SKIP_LOCKED``: when another worker or autovacuum is at it, this one does
        nothing.  A role that may not vacuum the table (not its owner) stops trying.
        """
        sql = self.sql

        async def work(conn: asyncpg.Connection) -> None:
            if self._may_vacuum is None:
                self._may_vacuum = bool(await conn.fetchval(_MAY_VACUUM, sql.jobs))
                if not self._may_vacuum:
                    logger.info(
                        "%r: this role may not VACUUM %s; autovacuum must keep it small", self, sql.jobs
                    )
                    return
            await conn.execute(f"VACUUM (SKIP_LOCKED, ANALYZE) {sql.jobs}, {sql.meta}")

        try:
            await self._run(work, repeatable=False)
        except Exception as exc:  # a background chore: the next one tries again
            logger.warning("%r: VACUUM of %s failed: %s", self, sql.jobs, scrub(str(exc), self.url))

    async def _ack(self, leases: list[Lease]) -> int:
        seqs, tokens = _refs(leases)
        shard = f"done.{random.randrange(DONE_SHARDS)}"
        return await self._settle(self.sql.ack, seqs, tokens, shard, fetch=True)

    async def _retry(self, leases: list[Lease], delays: list[float]) -> int:
        pairs = sorted(zip(leases, delays, strict=True), key=lambda pair: pair[0].ref)
        seqs, tokens = _refs([lease for lease, _ in pairs])
        delays = [delay for _, delay in pairs]
        return await self._settle(self.sql.retry, seqs, tokens, delays, self.channel, fetch=True)

    async def _release(self, leases: list[Lease]) -> int:
        return await self._settle(self.sql.release, *_refs(leases), self.channel, fetch=True)

    async def _dead_letter(self, entries: list[tuple[Lease, str, str | None]]) -> int:
        entries = sorted(entries, key=lambda entry: entry[0].ref)
        seqs, tokens = _refs([lease for lease, _, _ in entries])
        errors, traces = [error for _, error, _ in entries], [trace for _, _, trace in entries]
        return await self._settle(self.sql.dead_letter, seqs, tokens, errors, traces, fetch=True)

    async def _extend(self, leases: list[Lease], lease: float) -> int:
        return await self._settle(self.sql.extend, *_refs(leases), lease, repeatable=True)

    async def _settle(self, sql: str, *args: Any, fetch: bool = False, repeatable: bool = False) -> int:
        """Run one settle statement; settles of one handle run one at a time, rows in id order.

        The batcher renews leases while it acknowledges others: two statements locking
        overlapping rows in different orders could deadlock each other.
        """
        if self._settling is None:
            self._settling = asyncio.Lock()

        async def work(conn: asyncpg.Connection) -> int:
            if fetch:
                count: int = await conn.fetchval(sql, *args)
                return count
            return _row_count(await conn.execute(sql, *args))

        async with self._settling:
            return await self._run(work, repeatable=repeatable)

    async def _operator(self, sql: str, *args: Any, repeatable: bool = True) -> Any:
        """An operator's statement (stats, dead letters), with the planner's defaults: it may read it all."""

        async def work(conn: asyncpg.Connection) -> Any:
            async with conn.transaction():
                await conn.execute(_DEFAULT_PLANNER)
                return await conn.fetch(sql, *args)

        return await self._run(work, repeatable=repeatable)

    async def _stats(self) -> QueueStats:
        (row,) = await self._operator(self.sql.stats)
        return queue_stats(*row)

    async def _dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        return [StoredDeadLetter(*row) for row in await self._operator(self.sql.dead_rows, limit)]

    async def _requeue_dead(self, keys: list[str] | None) -> int:
        (row,) = await self._operator(self.sql.requeue, keys, self.channel, repeatable=False)
        moved: int = row[0]
        return moved

    async def _purge_dead(self, keys: list[str] | None) -> int:
        (row,) = await self._operator(self.sql.purge, keys, repeatable=False)
        purged: int = row[0]
        return purged

    async def _drop(self) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", advisory_key(self.schema))
                await conn.execute(self.sql.drop)
                await self._drop_schema_if_ours(conn)

        await self._run(work, prepare=False)
        self._prepared = False

    async def _drop_schema_if_ours(self, conn: asyncpg.Connection) -> None:
        """Remove the schema too if a queue created it and nothing else is left in it."""
        mark = await conn.fetchval(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1", self.schema
        )
        if mark != SCHEMA_MARK:
            return
        try:
            async with conn.transaction():  # a savepoint: RESTRICT refuses a schema still in use
                await conn.execute(f"DROP SCHEMA {quote(self.schema)} RESTRICT")
        except asyncpg.DependentObjectsStillExistError:
            pass

    async def _close(self) -> None:
        vacuuming, self._vacuuming = self._vacuuming, None
        if vacuuming is not None and not vacuuming.done():
            vacuuming.cancel()
            await asyncio.gather(vacuuming, return_exceptions=True)
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        if listener is not None:
            listener.terminate()  # nothing to flush: it only listens
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, *self.client_errors):
                pool.terminate()

    # -- producing on the caller's connection ---------------------------------------------------

    async def aput(self, data: Any, *, id: Any = None, delay: float = 0.0, connection: Any = None) -> Any:
        """Store one job; with ``connection`` (asyncpg or psycopg async), inside the caller's transaction.

        See :meth:`aput_many`.
        """
        (job_id,) = await self.aput_many(
            [data], ids=None if id is None else [id], delay=delay, connection=connection
        )
        return job_id

    async def aput_many(
        self,
        items: Iterable[Any],
        *,
        ids: Sequence[Any] | None = None,
        delay: float = 0.0,
        connection: Any = None,
    ) -> list[Any]:
        """Store many jobs in one statement; returns their ids.

        With ``connection`` (an ``asyncpg`` connection, or a ``psycopg.AsyncConnection``)
        the jobs are written on it, so they are part of the caller's open transaction: a
        rollback stores none, and idle workers are woken when it commits.
        """
        if connection is None:
            return await super().aput_many(items, ids=ids, delay=delay)
        self._check_open()
        job_ids, messages = self.encode_many(items, ids=ids, delay=delay)
        await self._call(self._connected(prepare=True))  # the tables, on our own connection
        args = _enqueue_args(messages, self.channel)
        if isinstance(connection, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)):
            await self._call(connection.fetchval(self.sql.enqueue, *args))
        elif _is_psycopg(connection, "AsyncConnection"):
            await self._on_psycopg(connection.execute(for_psycopg(self.sql.enqueue), _named(args)))
        else:
            raise TypeError(_connection_type_error(connection, "an asyncpg or psycopg.AsyncConnection"))
        return job_ids

    def put(self, data: Any, *, id: Any = None, delay: float = 0.0, connection: Any = None) -> Any:
        """``aput`` for synchronous code; ``connection`` is a ``psycopg.Connection`` (Django's, say)."""
        (job_id,) = self.put_many(
            [data], ids=None if id is None else [id], delay=delay, connection=connection
        )
        return job_id

    def put_many(
        self,
        items: Iterable[Any],
        *,
        ids: Sequence[Any] | None = None,
        delay: float = 0.0,
        connection: Any = None,
    ) -> list[Any]:
        """``aput_many`` for synchronous code; ``connection`` is a ``psycopg.Connection``."""
        if connection is None:
            return super().put_many(items, ids=ids, delay=delay)
        if not _is_psycopg(connection, "Connection"):
            raise TypeError(
                _connection_type_error(connection, "a psycopg.Connection (use aput for async ones)")
            )
        self._check_open()
        job_ids, messages = self.encode_many(items, ids=ids, delay=delay)
        self._blocking(lambda queue: queue.stats())  # creates the tables, on our own connection
        psycopg = sys.modules["psycopg"]
        try:
            connection.execute(for_psycopg(self.sql.enqueue), _named(_enqueue_args(messages, self.channel)))
        except psycopg.Error as exc:
            raise QueueError(scrub(f"{self!r}: {type(exc).__name__}: {exc}", self.url)) from exc
        return job_ids

    async def _on_psycopg(self, operation: Awaitable[Any]) -> Any:
        psycopg = sys.modules["psycopg"]
        try:
            return await operation
        except psycopg.Error as exc:
            raise QueueError(scrub(f"{self!r}: {type(exc).__name__}: {exc}", self.url)) from exc


def _split_url(url: str) -> tuple[str, str, dict[str, str]]:
    """(a URL holding only this queue's options, the DSN for the driver, the DSN's own parameters)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            f"not a PostgreSQL queue URL: {redact(url)!r} (use postgresql://user@host:port/dbname?name=...)"
        )
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = [(key, value) for key, value in pairs if key in _OPTIONS]
    libpq = [(key, value) for key, value in pairs if key not in _OPTIONS]
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(libpq)))
    return urlunsplit(parts._replace(query=urlencode(ours))), dsn, dict(libpq)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to undo, so no round trip.

    asyncpg's default sends ``RESET ALL; UNLISTEN *; ...`` every time a connection goes
    back to the pool, one more round trip per operation.  The queue's pooled connections
    keep no session state (advisory locks are transaction-scoped, LISTEN has its own
    connection), and asyncpg still rolls back a transaction left open.
    """


def _count(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _schema_name(schema: str) -> str:
    if not _NAME.fullmatch(schema):
        raise ValueError(
            f"schema must be 1-40 lower-case letters, digits or _ (not starting with a digit), got {schema!r}"
        )
    return schema


def _positive(name: str, value: Any, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if value == 0 and not zero:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    if value == float("inf"):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the server is (for now) out of reach, rather than the statement failed."""
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError,
                        asyncpg.AdminShutdownError, asyncpg.CrashShutdownError, asyncpg.CannotConnectNowError,
                        asyncpg.TooManyConnectionsError)):  # fmt: skip
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection is closed" in str(exc)
    return _refused_unsent(exc)


def _refused_unsent(exc: BaseException) -> bool:
    """Whether asyncpg refused to send the statement on a connection the server had just killed.

    Between the server's "terminating connection" message and the socket closing, the
    connection is still handed out; asyncpg then refuses to start the statement at all.
    """
    return isinstance(exc, asyncpg.InternalClientError) and "another operation" in str(exc)


def _enqueue_args(messages: list[Message], channel: str) -> tuple[Any, ...]:
    return (
        [m.key for m in messages],
        [m.job_id for m in messages],
        [m.payload for m in messages],
        [m.delay for m in messages],
        channel,
    )


def _named(args: Sequence[Any]) -> dict[str, Any]:
    return {f"p{index}": value for index, value in enumerate(args, 1)}


def _refs(leases: list[Lease]) -> tuple[list[int], list[str]]:
    ordered = sorted(leases, key=lambda lease: lease.ref)  # rows locked in id order
    return [lease.ref for lease in ordered], [lease.token for lease in ordered]


def _row_count(status: str) -> int:
    """The count in a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def _is_psycopg(connection: Any, kind: str) -> bool:
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(connection, getattr(psycopg, kind))


def _connection_type_error(connection: Any, wanted: str) -> str:
    return f"connection= must be {wanted}, got {type(connection).__module__}.{type(connection).__qualname__}"
