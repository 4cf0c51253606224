"""JetStream over nats-py's core client: API requests, pipelined publishes, pull requests.

One :class:`Wire` is one connection.  Everything is bulk: ``publish_all`` sends every
message with its own reply subject and waits for all the acknowledgements together (one
round trip for any number of messages); ``pull`` asks a pull consumer for a batch;
``send`` publishes many acknowledgements and confirms them with a single PING/PONG.
Replies arrive on one wildcard inbox per connection and are routed by their subject.

The connection reconnects by itself with exponential backoff and never buffers writes
while it is down (``pending_size=0``): an acknowledgement written during an outage would
reach the server after the lease it answers, so callers wait for the connection instead.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["BrokerError", "Delivery", "Wire"]

logger = logging.getLogger("microbatching")

_FIRST_BACKOFF = 0.05
_LAST_BACKOFF = 2.0
_STATUS = "Status"
_CONNECTION_LOST = (OSError, nats.errors.UnexpectedEOF, nats.errors.StaleConnectionError,
                    nats.errors.ConnectionClosedError)  # fmt: skip
#: API requests that may be sent again after a timeout or a 503: reads, and creates of one config.
_REPEATABLE = ("STREAM.INFO.", "CONSUMER.INFO.", "STREAM.MSG.GET.", "STREAM.NAMES", "STREAM.CREATE.",
               "CONSUMER.DURABLE.CREATE.")  # fmt: skip


class BrokerError(Exception):
    """JetStream answered an API request or a publish with an error."""

    def __init__(self, what: str, error: dict[str, Any]) -> None:
        self.code = int(error.get("code", 0))
        self.err_code = int(error.get("err_code", 0))
        super().__init__(f"{what}: {error.get('description', error)} (code {self.code}/{self.err_code})")


@dataclass
class Delivery:
    """A message a pull consumer delivered: when it arrived (monotonic seconds), and what its
    reply subject says: the consumer, the broker's delivery count, the stream sequence and
    the time the message was stored (Unix seconds).
    """

    msg: Msg
    arrived: float
    consumer: str
    delivered: int
    seq: int
    stored_at: float


def _delivery(msg: Msg, arrived: float) -> Delivery:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>, or
    # with <domain>.<account hash> after ACK and a random token at the end (newer servers).
    tokens = msg.reply.split(".")
    at = 2 if len(tokens) == 9 else 4
    return Delivery(msg, arrived, tokens[at + 1], int(tokens[at + 2]), int(tokens[at + 3]),
                    int(tokens[at + 5]) / 1e9)  # fmt: skip


@dataclass
class _Pull:
    limit: int
    got: list[Delivery] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Publishes:
    results: list[Any]
    left: int
    parse: Any  # reply message -> result
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Wire:
    """A connection to NATS for one queue handle (see the module docstring)."""

    def __init__(self, server: str, label: str, timeout: float, connect_options: dict[str, Any]) -> None:
        self.label = label  # how the queue names itself in log lines (credentials redacted)
        self.timeout = timeout
        self._server = server
        self._options = connect_options
        self._nc: Client | None = None
        self._connecting = asyncio.Lock()
        self._inbox = ""
        self._ids = itertools.count()
        self._pulls: dict[str, _Pull] = {}  # open pull requests by reply token
        self._active: dict[str, _Pull] = {}  # the open pull request of each consumer
        self._publishes: dict[str, _Publishes] = {}
        #: Deliveries that arrived after their pull request stopped waiting, per consumer.
        self.orphans: dict[str, list[Delivery]] = {}
        #: When each consumer's last pull request that waits on the server expires there (monotonic).
        self.lingering_until: dict[str, float] = {}
        self._failures = 0
        self._down_since: float | None = None

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> Client:
        """The connected client (connecting on first use; a failure raises a client error)."""
        if self._nc is not None:
            return self._nc
        async with self._connecting:  # concurrent first uses share one connection
            if self._nc is None:
                self._nc = await self._connect_new()
        return self._nc

    async def _connect_new(self) -> Client:
        nc = Client()
        try:
            await asyncio.wait_for(self._connect(nc), self.timeout)
        except BaseException:
            await nc.close()
            raise
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.>", cb=self._on_reply)
        return nc

    async def _connect(self, nc: Client) -> None:
        await nc.connect(
            servers=[self._server],
            name="microbatching",
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            max_reconnect_attempts=-1,
            reconnect_to_server_handler=self._next_server,
            connect_timeout=max(1, round(self.timeout)),
            ping_interval=10,
            max_outstanding_pings=3,
            pending_size=0,
            **self._options,
        )

    def _next_server(self, servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        """Reconnect with exponential backoff: 0, 50 ms, 100 ms, ... capped at 2 s."""
        delay = 0.0 if self._failures == 0 else min(_FIRST_BACKOFF * 2 ** (self._failures - 1), _LAST_BACKOFF)
        self._failures += 1
        return servers[self._failures % len(servers)], delay

    async def _on_error(self, error: Exception) -> None:
        # A lost connection is said once, by _on_disconnected; other errors are worth a line.
        if self._down_since is None and not isinstance(error, _CONNECTION_LOST):
            logger.warning("%s: NATS client error: %s", self.label, error)
        else:
            logger.debug("%s: reconnect attempt failed: %s", self.label, error)

    async def _on_disconnected(self) -> None:
        # Whatever was awaiting replies will not get them on this connection: wake it now.
        for publishes in self._publishes.values():
            publishes.done.set()
        for pull in self._pulls.values():
            pull.done.set()
        if self._nc is not None and not self._nc.is_closed and self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning("%s: lost the connection to NATS; reconnecting", self.label)

    async def _on_reconnected(self) -> None:
        down = 0.0 if self._down_since is None else time.monotonic() - self._down_since
        self._down_since = None
        self._failures = 0
        logger.warning("%s: reconnected to NATS after %.1f s", self.label, down)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def until_connected(self, timeout: float) -> Client:
        """The client once it is connected, waiting up to ``timeout`` seconds for a reconnect."""
        nc = await self.connect()
        deadline = time.monotonic() + timeout
        while not nc.is_connected:
            if nc.is_closed:
                raise nats.errors.ConnectionClosedError
            if time.monotonic() >= deadline:
                raise nats.errors.ConnectionReconnectingError
            await asyncio.sleep(0.02)
        return nc

    def local_address(self) -> tuple[str, int] | None:
        """The client end of the TCP connection (tests cut it from the server side)."""
        transport = getattr(self._nc, "_transport", None)
        writer = getattr(transport, "_io_writer", None)
        address: tuple[str, int] | None = None if writer is None else writer.get_extra_info("sockname")
        return address

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:  # closing must not fail shutdown
                logger.debug("%s: closing the NATS connection: %s", self.label, exc)

    # -- replies ---------------------------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        # A delivery keeps its stream subject: it belongs to the pull request its consumer has
        # open here.  Statuses come on <inbox>.p.<n> (pull request n); <inbox>.a.<batch>.<i>
        # acknowledges a publish.
        if msg.reply.startswith("$JS.ACK."):
            self._on_delivery(msg)
            return
        token = msg.subject[len(self._inbox) + 1 :]
        if token.startswith("p."):
            pull = self._pulls.get(token)
            if pull is not None:
                pull.done.set()
            status = (msg.headers or {}).get(_STATUS, "")
            if status not in ("404", "408"):
                logger.debug("%s: pull request ended with status %s %s", self.label, status, msg.headers)
        elif token.startswith("a."):
            batch, _, index = token[2:].partition(".")
            publishes = self._publishes.get(batch)
            if publishes is not None and publishes.results[int(index)] is None:
                publishes.results[int(index)] = publishes.parse(msg)
                publishes.left -= 1
                if publishes.left == 0:
                    publishes.done.set()

    def _on_delivery(self, msg: Msg) -> None:
        delivery = _delivery(msg, time.monotonic())
        pull = self._active.get(delivery.consumer)
        if pull is None or pull.done.is_set():
            self.orphans.setdefault(delivery.consumer, []).append(delivery)
            return
        pull.got.append(delivery)
        if len(pull.got) >= pull.limit:
            pull.done.set()

    # -- operations ------------------------------------------------------------------------------

    async def api(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JetStream API request (``$JS.API.`` + ``subject``); an error answer raises BrokerError.

        While JetStream is (re)starting, requests find no responder or are answered 503;
        they are asked again until ``timeout``: any request that found no responder, and
        the ones that change nothing or the same thing twice (info, reads, creates).
        """
        deadline = time.monotonic() + self.timeout
        payload = b"" if body is None else json.dumps(body).encode()
        repeatable = subject.startswith(_REPEATABLE)
        while True:
            nc = await self.until_connected(max(0.0, deadline - time.monotonic()))
            try:
                reply = await nc.request(f"$JS.API.{subject}", payload, timeout=self.timeout)
                answer: dict[str, Any] = json.loads(reply.data)
                if "error" not in answer:
                    return answer
                error = BrokerError(subject, answer["error"])
                if not (repeatable and error.code == 503):
                    raise error
                last: Exception = error
            except nats.errors.NoRespondersError as exc:
                last = exc
            except nats.errors.TimeoutError as exc:
                if not repeatable:
                    raise
                last = exc
            if time.monotonic() >= deadline:
                raise last
            await asyncio.sleep(0.05)

    async def api_many(self, requests: Sequence[tuple[str, dict[str, Any] | None]]) -> list[Any]:
        """Several API requests at once; each answer, or its BrokerError (not raised)."""
        answers: list[Any] = await asyncio.gather(
            *(self.api(subject, body) for subject, body in requests), return_exceptions=True
        )
        return answers

    async def publish_all(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]]
    ) -> list[dict[str, Any]]:
        """Store ``(subject, body, headers)`` messages in JetStream; their PubAcks, in order.

        Every message goes out before any acknowledgement is awaited: one round trip.  If
        the connection drops meanwhile, all are sent again once it is back (within
        ``timeout``): every message carries a message id, so JetStream stores each once.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            nc = await self.until_connected(max(0.0, deadline - time.monotonic()))
            try:
                acks = await self._pipelined(nc, messages, _pub_ack)
                break
            except (nats.errors.Error, OSError):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.02)
        for ack in acks:
            if "error" in ack:
                raise BrokerError("publish", ack["error"])
        return acks

    async def send(self, subjects: Sequence[str], payloads: Sequence[bytes], wait: float) -> None:
        """Settle deliveries of one consumer: publish each payload (``+ACK``, ``-NAK``, ``+TERM``,
        ``+WPI``) to its reply subject, and wait until the consumer confirms the last one.

        A consumer applies one connection's acknowledgements in order, so the last one's
        confirmation covers them all: one round trip, one reply.  (A PING/PONG would only
        say the server read them, not that the consumer applied them: a ``stats()`` right
        after could still count the jobs in flight.)  Waits up to ``wait`` seconds for a
        connection that is down to come back.
        """
        if not subjects:
            return
        nc = await self.until_connected(wait)
        for subject, payload in zip(subjects[:-1], payloads[:-1], strict=True):
            await nc.publish(subject, payload)
        await self._pipelined(nc, [(subjects[-1], payloads[-1], None)], _no_error)

    async def _pipelined(
        self, nc: Client, messages: Sequence[tuple[str, bytes, dict[str, str] | None]], parse: Any
    ) -> list[dict[str, Any]]:
        if not messages:
            return []
        batch = str(next(self._ids))
        publishes = _Publishes([None] * len(messages), len(messages), parse)
        self._publishes[batch] = publishes
        prefix = f"{self._inbox}.a.{batch}."
        try:
            for index, (subject, body, headers) in enumerate(messages):
                await nc.publish(subject, body, reply=f"{prefix}{index}", headers=headers)
            await _wait(publishes.done, self.timeout)
        finally:
            del self._publishes[batch]
        if publishes.left:  # no answer in time, or the connection dropped
            raise nats.errors.TimeoutError
        return publishes.results

    async def pull(self, stream: str, consumer: str, limit: int, wait: float) -> list[Delivery]:
        """Up to ``limit`` deliveries from a pull consumer, waiting up to ``wait`` s for the first.

        Deliveries that arrived after an earlier request stopped waiting come first.  A
        waiting request asks for one message (so nothing arrives after it is answered),
        then the rest are asked for without waiting.
        """
        got = self.orphans.pop(consumer, [])[:limit]
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        if len(got) < limit:
            got += await self._request(consumer, subject, {"batch": limit - len(got), "no_wait": True}, 0.0)
        if got or wait <= 0:
            return got
        first = await self._request(consumer, subject, {"batch": 1, "expires": int(wait * 1e9)}, wait)
        if first and limit > 1:
            first += await self._request(consumer, subject, {"batch": limit - 1, "no_wait": True}, 0.0)
        return first

    async def _request(
        self, consumer: str, subject: str, body: dict[str, Any], wait: float
    ) -> list[Delivery]:
        """One pull request; the caller has no other request open on ``consumer``."""
        nc = await self.until_connected(self.timeout)
        token = f"p.{next(self._ids)}"
        pull = _Pull(body["batch"])
        self._pulls[token] = pull
        self._active[consumer] = pull
        if wait:
            self.lingering_until[consumer] = time.monotonic() + wait
        try:
            await nc.publish(subject, json.dumps(body).encode(), reply=f"{self._inbox}.{token}")
            # Without an answer in time, what came is kept; later arrivals are orphans.
            await _wait(pull.done, wait + self.timeout)
        finally:
            pull.done.set()
            del self._pulls[token]
            if self._active.get(consumer) is pull:
                del self._active[consumer]
        return pull.got


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passed (the caller tells which).

    Not ``asyncio.wait_for``: before Python 3.12 it can swallow a cancellation that comes
    as the wait ends, and a claim loop or the delayed-job task would then never stop.
    """
    timer = asyncio.get_running_loop().call_later(timeout, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


def _no_error(msg: Msg) -> dict[str, Any]:
    status = (msg.headers or {}).get(_STATUS)
    return {"error": {"code": int(status)}} if status else {}


def _pub_ack(msg: Msg) -> dict[str, Any]:
    status = (msg.headers or {}).get(_STATUS)
    if status == "503":
        return {"error": {"code": 503, "description": "no stream stores this subject (no responders)"}}
    if status:
        return {"error": {"code": int(status), "description": (msg.headers or {}).get("Description", "")}}
    answer: dict[str, Any] = json.loads(msg.data)
    return answer


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """A client TLS context trusting ``ca`` (or the system's), with a client certificate if given."""
    context = ssl.create_default_context(cafile=ca or None)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


def client_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a broker operation may raise that mean "the broker or the link failed"."""
    return (nats.errors.Error, BrokerError, OSError, asyncio.TimeoutError)
