"""AMQP plumbing for the RabbitMQ queue: the queues one job queue is made of, and its connection.

``Layout`` names the broker queues and gives their declare arguments.  ``Link`` is one
connection with two channels: a consuming channel (manual acknowledgements, ``basic.qos``
prefetch, deliveries buffered until claimed) and a publishing channel in confirm mode.
When the consuming channel closes (the connection dropped, or the broker's
``consumer_timeout`` closed it), every delivery held on it is gone: the broker hands
those messages out again, and the link is ``broken`` until the queue opens a new one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands
from pamqp.common import FieldTable

__all__ = [
    "Acknowledgements", "BrokerRefused", "BrokerSilent", "Layout", "Link", "Publish", "client_errors",
    "delivery_count",
]  # fmt: skip

T = TypeVar("T")

#: Delay levels: queue ``<name>.delay.<ms>`` holds messages up to ``ms``, for ``ms`` =
#: 100 ms * 2**k.  A longer delay waits out the top level as often as it needs.
_FIRST_LEVEL_MS = 100
_LEVELS = 20  # 100 ms .. 14.6 h
_PUBLISH_CHUNK = 2000  # publishes in flight at once, their confirms awaited together
#: The acknowledgement frames a channel passes on to a quorum queue before it waits for the
#: queue to apply them (the broker's ``quorum_commands_soft_limit``, 32 by default).
_BROKER_PASSES_ON = 32
#: Time the broker is given to apply acknowledgements it kept back, before their channel closes.
_SETTLE_GRACE = 0.5


class BrokerRefused(Exception):
    """The broker refused a publish (a negative confirm, or the message could not be routed)."""


class BrokerSilent(Exception):
    """The broker did not answer in time: the link is given up (its deliveries go back)."""


def client_errors() -> tuple[type[BaseException], ...]:
    """The client's exceptions the queue translates into ``QueueError``."""
    return (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, BrokerRefused,
            BrokerSilent, ConnectionError, OSError, asyncio.TimeoutError)  # fmt: skip


@dataclass(frozen=True)
class Publish:
    """One message to publish: the queue it goes to, its body and its properties."""

    routing_key: str
    body: bytes
    properties: aiormq.spec.Basic.Properties


@dataclass(frozen=True)
class Layout:
    """The broker queues of the job queue called ``name``.

    ``name`` holds ready jobs, ``name.dead`` the dead letters, and ``name.delay.<ms>`` the
    jobs waiting out a delay of at most ``ms``: each level's messages expire (per-message
    TTL, the level's TTL as a bound) and are dead-lettered back into ``name``.  Within a
    level every delay is at least half the level, so no job waits behind one due later
    than twice its own delay, and levels never hold each other up.
    """

    name: str
    queue_type: str = "quorum"
    delivery_limit: int = 0

    @property
    def dead(self) -> str:
        return f"{self.name}.dead"

    @property
    def levels(self) -> list[int]:
        return [_FIRST_LEVEL_MS << k for k in range(_LEVELS)]

    def level_queue(self, ms: int) -> str:
        return f"{self.name}.delay.{ms}"

    @property
    def all_queues(self) -> list[str]:
        return [self.name, self.dead, *map(self.level_queue, self.levels)]

    def level_for(self, seconds: float) -> tuple[str, int]:
        """The delay queue a delay of ``seconds`` waits in, and the per-message TTL (ms) it gets there."""
        ms = max(1, math.ceil(seconds * 1000))
        for level in self.levels:
            if ms <= level:
                return self.level_queue(level), ms
        top = self.levels[-1]
        return self.level_queue(top), top

    def arguments(self) -> dict[str, FieldTable]:
        """Each broker queue's declare arguments."""
        base: FieldTable = {"x-queue-type": self.queue_type}
        main = {**base, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.dead}
        if self.delivery_limit and self.queue_type == "quorum":
            main["x-delivery-limit"] = self.delivery_limit
        result: dict[str, FieldTable] = {self.name: main, self.dead: dict(base)}
        for level in self.levels:
            delayed = {**base, "x-message-ttl": level, "x-dead-letter-exchange": "",
                       "x-dead-letter-routing-key": self.name}  # fmt: skip
            if self.queue_type == "quorum":  # dead-lettered back only once the main queue has it
                delayed.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
            result[self.level_queue(level)] = delayed
        return result


def delivery_count(message: DeliveredMessage) -> int:
    """How often the broker handed this message out before (``x-delivery-count``; 0 on a classic queue)."""
    headers = message.header.properties.headers or {}
    count = headers.get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


class Acknowledgements:
    """The acknowledgements of one channel, written in as few frames as they can be.

    RabbitMQ turns each ``basic.ack`` frame on a quorum queue into a command to the queue,
    passes at most 32 unapplied ones on (``quorum_commands_soft_limit``) and keeps the
    rest until the queue has applied earlier ones; a channel closed meanwhile drops what
    it kept, and those messages come back, their jobs to run again.  One ``multiple``
    frame acknowledges every delivery of the channel up to its tag, so what is settled in
    delivery order costs one command; deliveries settled ahead of older ones still held
    take a frame each, and :meth:`grace_before_close` gives the broker the time to pass
    those on before the channel closes.

    A ``multiple`` frame stops below the oldest delivery still held, and below a tag never
    seen here (a delivery the client dropped, for a consumer it had already cancelled): it
    never acknowledges what nobody asked to.
    """

    def __init__(self) -> None:
        self._unsettled: set[int] = set()  # tags delivered here and not yet acknowledged
        self._highest = 0  # the highest tag delivered here
        self._first_unseen: int | None = None  # the lowest tag below it never delivered here
        self._written: collections.deque[tuple[float, int]] = collections.deque()  # (when, frames)
        self._lock = asyncio.Lock()  # frames leave in the order they were planned

    def delivered(self, tag: int) -> None:
        if tag > self._highest + 1 and self._first_unseen is None:
            self._first_unseen = self._highest + 1
        self._unsettled.add(tag)
        self._highest = max(self._highest, tag)

    async def write(self, channel: aiormq.abc.AbstractChannel, tags: Iterable[int]) -> None:
        """Acknowledge ``tags`` (delivered here) without waiting for the broker."""
        async with self._lock:
            run_end, singles = self._plan(tags)
            if run_end is not None:
                await channel.basic_ack(run_end, multiple=True, wait=False)
            for tag in singles:
                await channel.basic_ack(tag, wait=False)
            now = time.monotonic()
            self._written.append((now, len(singles) + (run_end is not None)))
            while now - self._written[0][0] > _SETTLE_GRACE:
                self._written.popleft()

    def _plan(self, tags: Iterable[int]) -> tuple[int | None, list[int]]:
        """The tag of the ``multiple`` frame (or ``None``) and the tags acknowledged one by one.

        The tags count as acknowledged from here on: frames that fail to leave mean a closed
        channel, which hands every delivery out again anyway.
        """
        settling = self._unsettled.intersection(tags)
        self._unsettled.difference_update(settling)
        # Every tag below ``end`` is acknowledged by now, or about to be.
        end = min(self._unsettled, default=self._highest + 1)
        if self._first_unseen is not None:
            end = min(end, self._first_unseen)
        run = [tag for tag in settling if tag < end]
        singles = sorted(tag for tag in settling if tag >= end)
        return (max(run) if run else None), singles

    async def grace_before_close(self) -> None:
        """Wait, before the channel closes, for the broker to pass on every acknowledgement
        written: at once, unless more frames than it passes on at a time went out just now.

        A wait for a time, not a signal: AMQP tells a client nothing of it.
        """
        async with self._lock:  # a write under way is counted
            now = time.monotonic()
            recent = [(at, frames) for at, frames in self._written if now - at < _SETTLE_GRACE]
            if sum(frames for _, frames in recent) > _BROKER_PASSES_ON:
                await asyncio.sleep(recent[-1][0] + _SETTLE_GRACE - now)


class Link:
    """One connection to the broker: a consuming channel and a confirming publishing channel.

    Every exchange with the broker is bounded by ``timeout`` seconds: a broker that stops
    answering (a stuck channel, a paused node, a half-open connection) gets the link given
    up, as a dropped connection would, instead of a caller waiting on it forever.
    """

    def __init__(
        self,
        connection: aio_pika.abc.AbstractConnection,
        on_lost: Callable[[BaseException | None], None],
        timeout: float,
    ):
        self.connection = connection
        self.timeout = timeout
        self._on_lost = on_lost
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # set once broken
        self.broken = False
        self.buffer: collections.deque[DeliveredMessage] = collections.deque()
        self.arrived = asyncio.Event()
        self.prefetch = 0
        self.consumer_tags: list[str] = []
        #: Tags delivered to the current consumer and not yet settled: what fills its window.
        self.window: set[int] = set()
        #: Deliveries received on this link so far (a barrier compares it before and after).
        self.delivered = 0
        self.acks = Acknowledgements()  # of the consuming channel
        self.last_claim = 0.0
        self._consume: aiormq.abc.AbstractChannel | None = None
        self._publish: aiormq.abc.AbstractChannel | None = None
        self._query: aio_pika.abc.AbstractChannel | None = None

    @classmethod
    async def open(
        cls, url: str, name: str, on_lost: Callable[[BaseException | None], None], timeout: float,
        **options: Any,
    ) -> Link:  # fmt: skip
        # Named in the URL's query: aiormq 6 and 7 both read it (aio-pika 9, which Python 3.10
        # gets, drops client_properties= when given a URL).
        label = f"microbatching {name} pid {os.getpid()}"
        try:  # bounded: a server that accepts the socket and never answers would hang it
            connection = await aio_pika.connect(_with_connection_name(url, label), timeout=timeout, **options)
        except asyncio.TimeoutError:
            raise BrokerSilent(f"RabbitMQ did not complete the connection in {timeout} s") from None
        link = cls(connection, on_lost, timeout)
        try:
            connection.close_callbacks.add(link._lost)
            consume = await link.within(connection.channel(publisher_confirms=False))
            publish = await link.within(connection.channel(publisher_confirms=True))
            consume.close_callbacks.add(link._lost)
            link._consume = await consume.get_underlay_channel()
            link._publish = await publish.get_underlay_channel()
        except BaseException:
            await connection.close()
            raise
        return link

    async def within(self, call: Awaitable[T]) -> T:
        """``call``'s result; fails at once if the link breaks meanwhile, and gives the link up
        once the broker has not answered in ``timeout`` s (time it keeps the connection
        blocked, under a resource alarm, does not count: it answers once the alarm lifts).

        A call is never cancelled here (aiormq closes a channel whose call is cancelled, and
        every delivery held on it would go back counted); and the end of the link ends the
        wait, because aiormq does not always fail the calls of a connection reset under them.
        """
        inner = asyncio.ensure_future(call)
        try:
            while True:
                await asyncio.wait(
                    (inner, self._gone), timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if inner.done() or self._gone.done() or not self.blocked:
                    break
        finally:
            if not inner.done():
                inner.add_done_callback(_retrieve)  # it fails once the connection is closed
        if inner.done():
            # Cancelled by aiormq, giving the connection up (a gather of calls it cancelled
            # finishes with the CancelledError as its exception instead).
            if inner.cancelled() or isinstance(inner.exception(), asyncio.CancelledError):
                raise aiormq.exceptions.ChannelInvalidStateError(
                    "the client abandoned the call: its connection closed"
                )
            return inner.result()
        if self._gone.done():
            raise aiormq.exceptions.ChannelInvalidStateError("the connection to RabbitMQ was lost")
        error = BrokerSilent(f"RabbitMQ did not answer in {self.timeout} s: the connection is given up")
        self._lost(self, error)
        raise error

    @property
    def blocked(self) -> bool:
        """Whether the broker blocked this connection (``connection.blocked``: a memory or disk
        alarm); it reads nothing from it until the alarm lifts.

        aiormq 6 and 7 keep this in a private event and tell it nowhere else; if it moves,
        this reads ``False`` (a blocked connection is then given up at ``timeout``), and
        test_the_blocked_flag_of_the_client_is_where_the_queue_reads_it fails.
        """
        transport = getattr(self.connection, "transport", None)
        unblocked = getattr(getattr(transport, "connection", None), "_Connection__connection_unblocked", None)
        return isinstance(unblocked, asyncio.Event) and not unblocked.is_set()

    def _lost(self, _sender: object = None, exc: BaseException | None = None) -> None:
        if self.broken:
            return
        self.broken = True
        self._gone.set_result(None)
        self.buffer.clear()  # the broker hands these out again
        self.arrived.set()
        self._on_lost(exc)

    @property
    def consume_channel(self) -> aiormq.abc.AbstractChannel:
        if self._consume is None or self.broken:
            raise aiormq.exceptions.ChannelInvalidStateError("the connection to RabbitMQ was lost")
        return self._consume

    @property
    def consuming(self) -> bool:
        return bool(self.consumer_tags)

    @property
    def room(self) -> int:
        """How many more deliveries the consumers' prefetch windows let the broker send."""
        return max(0, self.prefetch - len(self.window)) if self.consumer_tags else 0

    async def consume(self, queue: str, prefetch: int) -> None:
        """Widen the window by ``prefetch`` unacknowledged deliveries: one more consumer on ``queue``.

        The window (``basic.qos``) is per consumer; a wider one is a second consumer beside
        the first, never a restart: what the first holds stays counted.
        """
        await self.within(self._consume_with(queue, prefetch))

    async def _consume_with(self, queue: str, prefetch: int) -> None:
        channel = self.consume_channel
        if not self.consumer_tags:
            self.prefetch, self.window = 0, set()
        await channel.basic_qos(prefetch_count=prefetch)
        ok = await channel.basic_consume(queue, self._delivered, no_ack=False)
        self.prefetch += prefetch
        self.consumer_tags.append(str(ok.consumer_tag))

    async def _delivered(self, message: DeliveredMessage) -> None:
        if not self.broken:
            tag = int(message.delivery_tag or 0)
            self.delivered += 1
            self.window.add(tag)
            self.acks.delivered(tag)
            self.buffer.append(message)
            self.arrived.set()

    @contextlib.asynccontextmanager
    async def own_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A channel of its own for one administrative exchange (purge, delete), closed after."""
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            yield await channel.get_underlay_channel()
        finally:
            await channel.close()

    async def ready_counts(self, queues: list[str]) -> list[int]:
        """The ready messages of each queue (a passive ``queue.declare``: the broker's own count).

        Raises ``ChannelNotFoundEntity`` for a missing queue (its channel is opened anew next time).
        """
        return [ready for ready, _ in await self.declared(queues)]

    async def declared(self, queues: list[str]) -> list[tuple[int, int]]:
        """Each queue's ready messages and consumers, as a passive ``queue.declare`` tells them."""
        return await self.within(self._declared(queues))

    async def _declared(self, queues: list[str]) -> list[tuple[int, int]]:
        if self._query is None or self._query.is_closed:
            self._query = await self.connection.channel(publisher_confirms=False)
        raw = await self._query.get_underlay_channel()
        counts = []
        for queue in queues:
            ok = await raw.queue_declare(queue, passive=True)
            counts.append((int(ok.message_count or 0), int(ok.consumer_count or 0)))
        return counts

    async def barrier(self) -> None:
        """One round trip on the consuming channel: every delivery the broker sent on it before is here.

        The broker writes a channel's frames in order, and the client hands each delivery
        to its consumer before it reads the reply.
        """
        await self.within(self.consume_channel.basic_qos(prefetch_count=self.prefetch))

    async def cancel(self) -> None:
        """Stop the consumers: the broker sends nothing more (what is buffered stays buffered)."""
        tags, self.consumer_tags = self.consumer_tags, []
        if tags and not self.broken:
            await self.within(self._cancel(tags))

    async def _cancel(self, tags: list[str]) -> None:
        for tag in tags:
            await self.consume_channel.basic_cancel(tag)

    async def ack(self, tags: list[int]) -> None:
        """Acknowledge ``tags`` (frames written without waiting), then one round trip confirms the
        broker read them: it handles a channel's frames in order."""
        await self.within(self._ack(tags))

    async def _ack(self, tags: list[int]) -> None:
        channel = self.consume_channel
        self.window.difference_update(tags)
        await self.acks.write(channel, tags)
        await channel.basic_qos(prefetch_count=self.prefetch)

    async def publish_all(self, messages: list[Publish]) -> None:
        """Publish every message, the confirms awaited together; raises unless the broker has them all."""
        if self._publish is None or self.broken:
            raise aiormq.exceptions.ChannelInvalidStateError("the connection to RabbitMQ was lost")
        channel = self._publish
        for start in range(0, len(messages), _PUBLISH_CHUNK):
            chunk = messages[start : start + _PUBLISH_CHUNK]
            confirms = await self.within(asyncio.gather(
                *(channel.basic_publish(m.body, routing_key=m.routing_key, properties=m.properties,
                                        mandatory=True) for m in chunk)
            ))  # fmt: skip
            for message, confirm in zip(chunk, confirms, strict=True):
                if not isinstance(confirm, commands.Basic.Ack):
                    raise BrokerRefused(
                        f"RabbitMQ did not take a message for {message.routing_key!r}: {confirm!r}"
                    )

    async def close(self) -> None:
        lost, self.broken = self.broken, True
        if not self._gone.done():
            self._gone.set_result(None)
        self.buffer.clear()
        if not self.connection.is_closed:
            if not lost:  # on a lost link, whatever was not applied goes back anyway
                await self.acks.grace_before_close()
            # Bounded: on a broker that stopped answering, the close frame is never confirmed.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.connection.close()), self.timeout)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _with_connection_name(url: str, label: str) -> str:
    """``url`` with ``name=label`` in its query: the connection's name on the broker."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "name"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("name", label)])))
