"""RedisQueue: a durable queue on Redis Streams and a consumer group (``redis://``, ``rediss://``)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import parse_url

from ..errors import InvalidQueueError
from ._base import ClaimQueue
from ._redis_scripts import GROUP, KEYS, SCRIPTS, VERSION
from ._registry import redact, resolve_options, scrub
from ._serialization import DEFAULT_MAX_PAYLOAD_BYTES, Serializer
from ._table import worker_lost
from ._types import Claimed, Lease, Message, QueueCapabilities, QueueStats, StoredDeadLetter

__all__ = ["RedisQueue"]

T = TypeVar("T")
logger = logging.getLogger("microbatching")

#: The queue's own options in the URL's query, with their types and defaults.
_OPTIONS: dict[str, tuple[type, Any]] = {"serializer": (str, "json"), "lease": (float, 30.0),
            "name": (str, "mb"), "reconnect_timeout": (float, 30.0)}  # fmt: skip
#: redis-py's connection options a URL's query may carry (passed through to the client).
_CLIENT_OPTIONS = frozenset(
    {"db", "username", "password", "client_name", "protocol", "socket_timeout", "socket_connect_timeout",
     "socket_keepalive", "health_check_interval", "max_connections", "ssl_cert_reqs", "ssl_ca_certs",
     "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_check_hostname",
     "ssl_min_version", "ssl_ciphers"}
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_CHUNK = 1000  # messages per enqueue script: bounds how long one script holds the server
_MAX_BLOCK = 5.0  # seconds one blocking read waits at most (the claim loops on)
_SWEEP_EVERY = 60.0  # seconds between sweeps of consumers that vanished holding nothing
# The dead-letter error of a job whose lease ran out on its last attempt, as a Lua format.
_WORKER_LOST = worker_lost(1234567).replace("%", "%%").replace("1234567", "%d")
_DISCONNECTED = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_REFUSED = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)


class RedisQueue(ClaimQueue):
    """A durable queue on Redis Streams: ``RedisQueue("redis://localhost:6379/0?name=jobs")``.

    Jobs are entries of a stream claimed through one consumer group: enqueued in bulk by
    a script per thousand jobs, claimed in bulk (``XREADGROUP COUNT``) under a lease whose
    deadline is kept on the Redis server's clock, acknowledged in bulk; an idle claim
    blocks on the stream, so an idle worker costs nothing and wakes as soon as a job
    arrives.  Every settle runs as a server-side script that first checks the job is still
    held under its claim (consumer and delivery count), so a worker whose lease ran out
    cannot remove, retry or dead-letter a job another worker holds now.  Delayed retries
    wait in a sorted set and move back to the stream when due, in one atomic step.
    Acknowledged entries are deleted from the stream.

    The URL is redis-py's (``rediss://`` for TLS, ``redis://user:password@host:port/db``)
    plus the queue's options in its query: ``name`` (default ``mb``; the keys are
    ``microbatching:{<name>}:*``, one hash tag, so every script touches one Cluster
    slot), ``lease`` (seconds, default 30), ``serializer`` (``json`` or ``pickle``,
    recorded on first use; later openers must match) and ``reconnect_timeout`` (how long
    an operation keeps reconnecting after the connection drops before it fails, default
    30 s).  redis-py's connection options (``socket_timeout``, ``ssl_ca_certs``, ...) may
    be given in the query too.  With ``create=False`` nothing is created: a queue that
    does not exist raises :class:`~microbatching.errors.InvalidQueueError`.

    Durability is Redis's: a job is stored (and an acknowledgement kept) across a Redis
    restart only with ``appendonly yes``; ``appendfsync always`` loses nothing that was
    acknowledged, ``everysec`` up to a second of writes.
    """

    capabilities = QueueCapabilities(blocking_claim=True)
    client_errors = (redis.exceptions.RedisError,)

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        serializer: str | Serializer | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float | None = None,
        name: str | None = None,
        reconnect_timeout: float | None = None,
        create: bool = True,
    ) -> None:
        client_url, own_query = _split_url(url)
        given = {"serializer": serializer, "lease": lease, "name": name,
                 "reconnect_timeout": reconnect_timeout}  # fmt: skip
        options = resolve_options(f"?{own_query}" if own_query else "", _OPTIONS, given)
        super().__init__(
            serializer=options["serializer"],
            max_payload_bytes=max_payload_bytes,
            lease=options["lease"],
            create=create,
        )
        self.url = url
        self.name = _checked_name(options["name"])
        self.reconnect_timeout = _positive("reconnect_timeout", options["reconnect_timeout"])
        self._client_url = client_url
        self._socket_timeout = _socket_timeout(client_url)
        self._keys = [f"microbatching:{{{self.name}}}:{suffix}" for suffix in KEYS]
        self._consumer = _consumer_name()
        self._redis: redis.asyncio.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._ready = False
        self._down_since: float | None = None
        self._last_sweep = time.monotonic()

    def __repr__(self) -> str:
        return f"<RedisQueue {redact(self.url)!r} name={self.name!r}>"

    @property
    def keys(self) -> list[str]:
        """The Redis keys this queue uses (``drop()`` deletes them)."""
        return list(self._keys)

    @property
    def consumer(self) -> str:
        """This handle's consumer name in the stream's consumer group."""
        return self._consumer

    def _clone(self) -> RedisQueue:
        # From the URL without the queue's options, which are passed as they are now (the
        # lease may have been changed since), so nothing is given both ways.
        clone = RedisQueue(
            self._client_url, serializer=self.serializer, max_payload_bytes=self.max_payload_bytes,
            lease=self.lease, name=self.name, reconnect_timeout=self.reconnect_timeout, create=self.create,
        )  # fmt: skip
        clone.url = self.url
        return clone

    # -- plumbing ---------------------------------------------------------------------------

    def _connection(self) -> redis.asyncio.Redis:
        if self._redis is None:
            # Named after the consumer, so CLIENT LIST shows which worker each connection is.
            name = None if "client_name=" in self._client_url else self._consumer
            client = redis.asyncio.Redis.from_url(self._client_url, decode_responses=False, client_name=name)
            self._scripts = {name: client.register_script(text) for name, text in SCRIPTS.items()}
            self._redis = client
        return self._redis

    async def _script(self, name: str, args: Sequence[Any] = ()) -> Any:
        """Run one of the queue's scripts, on a queue that exists (created first if allowed)."""
        return await self._reconnecting(lambda: self._ensured(lambda: self._run(name, args)))

    async def _run(self, name: str, args: Sequence[Any]) -> Any:
        self._connection()
        return await self._scripts[name](keys=self._keys, args=args)

    async def _ensured(self, operation: Callable[[], Awaitable[T]]) -> T:
        if not self._ready:
            await self._setup()
        try:
            return await operation()
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._ready = False  # the queue was dropped under us
            await self._setup()
            return await operation()

    async def _setup(self) -> None:
        """Create the stream, its group and the meta hash (one atomic script, so any number
        of workers may start at once), or with ``create=False`` check they exist."""
        args = (GROUP, self.serializer.name, VERSION, "1" if self.create else "0")
        stored, has_group = await self._run("setup", args)
        if stored is None or not has_group:
            raise InvalidQueueError(f"no queue named {self.name!r} at {redact(self.url)}")
        if stored.decode() != self.serializer.name:
            raise InvalidQueueError(
                f"the queue {self.name!r} at {redact(self.url)} holds jobs encoded with "
                f"serializer={stored.decode()!r}; open it with the same serializer "
                f"(this queue was given {self.serializer.name!r})"
            )
        self._ready = True

    async def _reconnecting(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``; while the connection is down, retry with backoff for
        ``reconnect_timeout`` seconds (every operation is safe to repeat: see the scripts)."""
        pause, first_failure = 0.05, None
        while True:
            try:
                result = await operation()
            except _DISCONNECTED as exc:
                if isinstance(exc, _REFUSED):
                    raise  # a wrong password does not get better by retrying
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                self._lost(exc)
                if now - first_failure >= self.reconnect_timeout:
                    raise
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            self._regained()
            return result

    def _lost(self, exc: BaseException) -> None:
        if self._down_since is None:  # said once per outage, however many calls see it
            self._down_since = time.monotonic()
            logger.warning(
                "lost the connection to %s (%s); reconnecting for up to %g s",
                redact(self.url), scrub(f"{type(exc).__name__}: {exc}", self.url), self.reconnect_timeout,
            )  # fmt: skip

    def _regained(self) -> None:
        if self._down_since is not None:
            down, self._down_since = time.monotonic() - self._down_since, None
            logger.warning("reconnected to %s after %.1f s", redact(self.url), down)

    # -- the primitives ---------------------------------------------------------------------

    async def _enqueue(self, messages: list[Message]) -> int:
        chunks = [_enqueue_args(messages[i : i + _CHUNK]) for i in range(0, len(messages), _CHUNK)]
        if len(chunks) == 1:
            stored: int = await self._script("enqueue", chunks[0])
            return stored
        return await self._reconnecting(lambda: self._ensured(lambda: self._enqueue_atomically(chunks)))

    async def _enqueue_atomically(self, chunks: list[list[Any]]) -> int:
        # Several scripts in one MULTI/EXEC: all of them run, or (the connection dropped
        # before EXEC) none, and they reach the server in one round trip.
        async with self._connection().pipeline(transaction=True) as pipe:
            for args in chunks:
                await self._scripts["enqueue"](keys=self._keys, args=args, client=pipe)
            results = await pipe.execute()
        return sum(results)

    async def _claim(self, limit: int, lease: float, max_attempts: int | None, wait: float) -> list[Claimed]:
        deadline = time.monotonic() + wait
        while True:
            sweep = self._sweep_due()
            # One id per script call, kept when the call is repeated after a dropped connection;
            # random, not counted, so a handle copied into a forked child repeats none of the
            # parent's claims (both would be the same consumer).
            attempts, claim_id = max_attempts or 0, secrets.token_hex(8)
            args = (GROUP, self._consumer, limit, _ms(lease), attempts, _WORKER_LOST, sweep, claim_id)
            rows, last_id, next_due = await self._script("claim", args)
            left = deadline - time.monotonic()
            if rows or left <= 0:
                return [self._claimed(row) for row in rows]
            await self._block(last_id, min(left, next_due / 1000 if next_due >= 0 else left))

    def _sweep_due(self) -> str:
        now = time.monotonic()
        if now - self._last_sweep < _SWEEP_EVERY:
            return "0"
        self._last_sweep = now
        return "1"

    async def _block(self, last_id: bytes, seconds: float) -> None:
        """Wait on the server until an entry is added after ``last_id`` (or ``seconds`` pass).

        XREAD delivers nothing to the group: the claim that follows takes the jobs and
        records their leases in one script, so no job is ever claimed without a lease.
        """
        limit = _MAX_BLOCK if self._socket_timeout is None else min(_MAX_BLOCK, self._socket_timeout / 2)
        block = max(1, _ms(min(seconds, limit)))
        stream: dict[Any, Any] = {self._keys[0]: last_id}
        try:
            await self._connection().xread(stream, count=1, block=block)
        except _DISCONNECTED as exc:
            # Not retried here: the claim that follows reconnects (with backoff) and finds
            # what became ready meanwhile, leases that ran out included.
            if isinstance(exc, _REFUSED):
                raise
            self._lost(exc)
            await asyncio.sleep(0.05)

    def _claimed(self, row: list[Any]) -> Claimed:
        entry_id, deliveries, key, job_id, payload, attempts, recovered = row
        # Every claim of an entry raises its delivery count: with the consumer, it names this claim.
        token = f"{deliveries}:{self._consumer}"
        earlier = recovered + deliveries - 1  # this entry's earlier deliveries all ran out
        return Claimed(
            Lease(key.decode(), token, attempts + deliveries, earlier, entry_id.decode()), job_id, payload
        )

    async def _ack(self, leases: list[Lease]) -> int:
        args: list[Any] = [GROUP]
        for lease in leases:
            args += [*_claim_of(lease), lease.key]
        acked: int = await self._script("ack", args)
        return acked

    async def _retry(self, leases: list[Lease], delays: list[float]) -> int:
        return await self._move_back(leases, delays, undo=False)

    async def _release(self, leases: list[Lease]) -> int:
        return await self._move_back(leases, [0.0] * len(leases), undo=True)

    async def _move_back(self, leases: list[Lease], delays: list[float], undo: bool) -> int:
        args: list[Any] = [GROUP, "1" if undo else "0"]
        for lease, delay in zip(leases, delays, strict=True):
            args += [*_claim_of(lease), _ms(delay)]
        moved: int = await self._script("retry", args)
        return moved

    async def _dead_letter(self, entries: list[tuple[Lease, str, str | None]]) -> int:
        args: list[Any] = [GROUP]
        for lease, error, trace in entries:
            args += [*_claim_of(lease), error, trace or "", "0" if trace is None else "1"]
        moved: int = await self._script("dead_letter", args)
        return moved

    async def _extend(self, leases: list[Lease], lease: float) -> int:
        args: list[Any] = [GROUP, _ms(lease)]
        for held in leases:
            args += _claim_of(held)
        renewed: int = await self._script("extend", args)
        return renewed

    async def _stats(self) -> QueueStats:
        length, claimed, expired, delayed, due, dead, done, oldest, now = await self._script("stats", [GROUP])
        age = None if oldest is None else max(0.0, (now - float(oldest)) / 1000)
        pending = length - claimed + expired + due
        return QueueStats(pending, delayed - due, claimed - expired, done, dead, age)

    async def _dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        dead_key = self._keys[5]

        async def read() -> Any:
            return await self._connection().xrange(dead_key, count=limit)

        rows = await self._reconnecting(lambda: self._ensured(read))
        return [_stored_dead_letter(entry_id, fields) for entry_id, fields in rows]

    async def _requeue_dead(self, keys: list[str] | None) -> int:
        if keys is not None:
            moved, _ = await self._script("requeue_dead", ["ids", *keys])
            return int(moved)
        total = 0
        while True:  # 500 per script, so a large dead-letter stream never holds the server long
            moved, looked_at = await self._script("requeue_dead", ["all"])
            total += int(moved)
            if looked_at < 500:
                return total

    async def _purge_dead(self, keys: list[str] | None) -> int:
        purged = await self._script("purge_dead", ["all"] if keys is None else ["ids", *keys])
        return int(purged)

    async def _drop(self) -> None:
        await self._reconnecting(lambda: self._connection().delete(*self._keys))
        self._ready = False

    async def _close(self) -> None:
        client, self._redis = self._redis, None
        if client is None:
            return
        try:
            if self._ready:  # leave the group if holding nothing; never wait long for it
                leave = self._scripts["leave"](keys=self._keys, args=[GROUP, self._consumer])
                await asyncio.wait_for(leave, 2.0)
        except (redis.exceptions.RedisError, asyncio.TimeoutError, OSError):
            pass
        finally:
            await client.aclose()


def _split_url(url: str) -> tuple[str, str]:
    """``url`` for redis-py (its own options kept) and the query of the queue's options."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis queue URL: {redact(url)!r} (use redis:// or rediss://)")
    own, client = [], []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _OPTIONS:
            own.append((name, value))
        elif name in _CLIENT_OPTIONS:
            client.append((name, value))
        else:
            known = ", ".join(sorted({*_OPTIONS, *_CLIENT_OPTIONS}))
            raise ValueError(f"unknown option {name!r} in {redact(url)!r}; the options are: {known}")
    client_url = urlunsplit(parts._replace(query=urlencode(client)))
    try:
        parse_url(client_url)
    except ValueError as exc:
        raise ValueError(scrub(f"{redact(url)!r}: {exc}", url)) from None
    return client_url, urlencode(own)


def _socket_timeout(client_url: str) -> float | None:
    timeout: Any = parse_url(client_url).get("socket_timeout")
    return None if timeout is None else float(timeout)


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"queue name must be 1-100 letters, digits or _ . : -, got {name!r}")
    return name


def _positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return float(value)


def _consumer_name() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _claim_of(lease: Lease) -> tuple[str, str, str]:
    """(entry id, consumer, delivery count): what a script checks before it settles a job."""
    deliveries, _, consumer = lease.token.partition(":")
    return lease.ref, consumer, deliveries


def _enqueue_args(messages: Sequence[Message]) -> list[Any]:
    args: list[Any] = []
    for message in messages:
        args += [message.key, message.job_id, message.payload, _ms(message.delay)]
    return args


def _stored_dead_letter(entry_id: bytes, fields: dict[bytes, bytes]) -> StoredDeadLetter:
    trace = fields.get(b"t")
    return StoredDeadLetter(
        entry_id.decode(), fields[b"i"], fields[b"p"], int(fields[b"a"]), fields[b"e"].decode(),
        int(fields[b"f"]) / 1000, None if trace is None else trace.decode(),
    )  # fmt: skip
