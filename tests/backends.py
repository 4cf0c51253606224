"""The bundled durable queues the suite runs against: one entry per queue.

Each entry says how to name a fresh queue on its backend, which service it needs, and how
to drop a client's connection from the server side.  The conformance, durable-queue and
fault tests are parametrized over ``BACKENDS``, so a new queue is one entry here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import service_available


@dataclass(frozen=True)
class Backend:
    """A bundled durable queue as the tests see it."""

    name: str
    #: (unique queue name, a temporary directory) -> the queue's URL
    url: Callable[[str, Path], str]
    #: host, port and name of the service it needs (None: embedded)
    service: tuple[str, int, str] | None = None
    #: the client library it needs (skipped, or failed under MICROBATCHING_REQUIRE_SERVICES=1, without it)
    client: str | None = None
    #: kills the queue's connection from the server side
    break_connection: Callable[[Any], Awaitable[None]] | None = None
    #: a lease the lease cases can rely on at this backend's granularity
    lease: float = 0.4
    #: whether a consumer's jobs come back when its connection closes rather than after a lease
    vanish_by_closing: bool = False
    #: whether the lease is a setting of the queue (a broker's per-consumer timeout), not of each
    #: claim: the conformance suite then opens the queue with ``lease=<lease>``
    lease_is_the_queues: bool = False

    def check_available(self) -> None:
        """Skip (or fail, when services are required) unless the client and the service are here."""
        if self.client is not None and importlib.util.find_spec(self.client) is None:
            reason = f"{self.name}: the client library {self.client!r} is not installed"
            if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") == "1":
                pytest.fail(f"{reason}, and MICROBATCHING_REQUIRE_SERVICES=1 requires it")
            pytest.skip(reason)
        if self.service is not None:
            service_available(*self.service)


async def _kill_redis_clients(queue: Any) -> None:
    """Kill every connection of ``queue`` on the Redis server (they are named after its consumer)."""
    import redis.asyncio

    admin = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    try:
        for client in await admin.client_list():
            if client["name"] == queue.consumer:
                await admin.client_kill_filter(_id=client["id"])
    finally:
        await admin.aclose()


async def cut_tcp_from_server(local: tuple[str, int] | None, server_port: int) -> None:
    """Destroy the server's end of the client's TCP connection (``ss -K``): the server drops the client."""
    if local is None:
        raise RuntimeError("the queue has no open connection to cut")
    host, port = local[0], local[1]
    filters = ["src", f"{host}:{server_port}", "dst", f"{host}:{port}"]
    await asyncio.to_thread(subprocess.run, ["ss", "-K", *filters], capture_output=True, check=True)


async def _nats_break(queue: Any) -> None:
    await queue._wire.connect()
    await cut_tcp_from_server(queue._wire.local_address(), 4222)


POSTGRES = os.environ.get("MICROBATCHING_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def terminate_postgres_backends(queue: Any) -> None:
    """Kill every server process serving ``queue``'s connections (pg_terminate_backend, waiting for each)."""
    import asyncpg

    conn = await asyncpg.connect(POSTGRES)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid()",
            f"microbatching {queue.schema}.{queue.table.name}",
        )
    finally:
        await conn.close()


RABBITMQ = os.environ.get("MICROBATCHING_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def _rabbitmq_break(queue: Any) -> None:
    """Cut the queue's connection on the server's side: RabbitMQ sees its client gone."""
    link = await queue._connected()
    # aiormq keeps the socket's writer in its writer task only
    writer = link.connection.transport.connection._writer_task.get_coro().cr_frame.f_locals["writer"]
    await cut_tcp_from_server(writer.get_extra_info("sockname"), urlsplit(RABBITMQ).port or 5672)


BACKENDS: list[Backend] = [
    Backend("sqlite", lambda name, tmp: f"sqlite:///{tmp}/{name}.db"),
    Backend(
        "redis",
        lambda name, tmp: f"redis://127.0.0.1:6379/0?name={name}",
        service=("127.0.0.1", 6379, "Redis"),
        client="redis",
        break_connection=_kill_redis_clients,
    ),
    Backend(
        "nats",
        lambda name, tmp: f"nats://127.0.0.1:4222?stream={name}",
        service=("127.0.0.1", 4222, "NATS"),
        client="nats",
        break_connection=_nats_break,
        lease=1.0,
        lease_is_the_queues=True,
    ),
    Backend(
        "postgres",
        lambda name, tmp: f"{POSTGRES}?name={name}",
        service=(urlsplit(POSTGRES).hostname or "127.0.0.1", urlsplit(POSTGRES).port or 5432, "PostgreSQL"),
        client="asyncpg",
        break_connection=terminate_postgres_backends,
    ),
    Backend(
        "rabbitmq",
        # create_wait=0: no test here kills the broker (tests/test_rabbitmq.py does, with the default)
        lambda name, tmp: f"{RABBITMQ}?name={name}&create_wait=0",
        service=(urlsplit(RABBITMQ).hostname or "127.0.0.1", urlsplit(RABBITMQ).port or 5672, "RabbitMQ"),
        client="aio_pika",
        break_connection=_rabbitmq_break,
        vanish_by_closing=True,
    ),
]
