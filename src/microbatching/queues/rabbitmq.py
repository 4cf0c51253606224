"""RabbitMQQueue: a durable queue on RabbitMQ, shared by any number of workers.

What it declares on the broker, for a queue named ``N`` (quorum queues by default):

- ``N``: the ready jobs; dead-letters into ``N.dead`` through the default exchange (what
  the broker itself dead-letters: a message past ``x-delivery-limit``);
- ``N.dead``: the dead letters, each with its last error and traceback in its headers;
- ``N.delay.<ms>`` for ``ms`` = 100, 200, ... 2**19 * 100: jobs waiting out a delay of at
  most ``ms``, each expiring after its own delay and dead-lettered back into ``N``.

A message is never changed in place.  A retry, a release or a dead letter publishes a copy
(confirmed) carrying the attempts spent so far (header ``mb-attempts``) and then
acknowledges the original.  A job's attempts are those of its earlier copies plus the
broker's delivery count of this one (``x-delivery-count``) plus one, so a job that kills
its worker is counted by the broker.

RabbitMQ has no lease timeout: a delivery is held until it is acknowledged or its channel
closes (the worker's connection dropped, or it held a delivery past the broker's
``consumer_timeout``); then the broker hands it out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiormq
from aiormq.abc import DeliveredMessage

from ..errors import InvalidQueueError
from ._amqp import Acknowledgements, Layout, Link, Publish, client_errors, delivery_count
from ._base import ClaimQueue, _seconds
from ._nats_layout import frame, unframe
from ._registry import redact, resolve_options
from ._serialization import DEFAULT_MAX_PAYLOAD_BYTES, Serializer
from ._table import worker_lost
from ._types import Claimed, Lease, Message, QueueCapabilities, QueueStats, StoredDeadLetter

__all__ = ["RabbitMQQueue"]

logger = logging.getLogger("microbatching")

#: The queue's own options in a URL's query, with their types and defaults.
_OPTIONS: dict[str, tuple[type, Any]] = {
    "serializer": (str, "json"),
    "lease": (float, 30.0),
    "name": (str, "microbatching"),
    "queue_type": (str, "quorum"),
    "delivery_limit": (int, 100),
    "prefetch": (int, 0),
    "create_wait": (float, 0.0),
    "timeout": (float, 20.0),
}
#: Connection options passed on to the client (aiormq's names).
_CLIENT_OPTIONS = ("heartbeat", "connection_timeout", "cafile", "capath", "keyfile", "certfile",
                   "no_verify_ssl", "frame_max", "channel_max")  # fmt: skip
_ATTEMPTS, _RECOVERED, _KEY, _DUE = "mb-attempts", "mb-recovered", "mb-key", "mb-due"
_ERROR, _TRACEBACK, _FAILED_AT = "mb-error", "mb-traceback", "mb-failed-at"
_TRACEBACK_LIMIT = 32_000  # characters: headers travel in one frame
_EARLY = 0.25  # a delayed job back this much before its due time waits again
#: How long a claim asked not to wait waits for the deliveries of jobs the broker counts ready.
_PUSH_GRACE = 0.5
_TRICKLE = 0.005  # seconds a claim waits for the rest of a window once deliveries arrive
_DEAD_READ_MAX = 65_535  # dead letters one listing, requeue or purge reads at most
_DEAD_QUIET_FIRST, _DEAD_QUIET = 2.0, 0.1  # seconds without a dead letter arriving that end a read
_DEAD_BACK = 2.0  # seconds a dead-letter read waits for the broker to count the rest ready again
_CLOSING_CONSUMER, _CLOSING_LOOKS = 0.3, 6  # a dead consumer's connection: looks again, seconds apart
_SUSPECT_AFTER = 2  # earlier deliveries ended by a dead consumer that make a job suspect
_IDLE = 1.0  # seconds without a claim after which a handle gives back what it was pushed
#: Seconds a handle stopping its consumers waits at most for the deliveries on their way to it.
_QUIESCE = 2.0
_QUIESCE_POLL = 0.005  # seconds between looks while the broker is still filling the window


#: The open handles of this process, for the in-flight count (see ``_local_in_flight``).
_HANDLES: weakref.WeakSet[RabbitMQQueue] = weakref.WeakSet()


class RabbitMQQueue(ClaimQueue):
    """A durable queue on RabbitMQ: ``RabbitMQQueue("amqp://guest:guest@localhost/?name=emails")``.

    Jobs wait in a quorum queue; each worker consumes with manual acknowledgements and a
    prefetch of what it can run (``batch_size * (max_concurrent_batches + 1)``, learnt
    from its first claim, or ``prefetch``); acknowledgements are written without waiting,
    one round trip per batch confirming them; enqueues wait for publisher confirms, in
    bulk.  Delays wait in per-level delay queues; failed jobs go to ``<name>.dead`` with
    their last error and traceback.  See the module docstring for the broker's side.

    The URL is the client's (``amqp://user:password@host:5672/vhost``, ``amqps://`` for
    TLS, with ``cafile``, ``certfile``, ``keyfile``, ``heartbeat`` in the query, or pass an
    ``ssl.SSLContext`` as ``tls``); the queue's own options go in the query too: ``name``,
    ``queue_type`` (``quorum`` or ``classic``), ``delivery_limit`` (the broker dead-letters
    a message delivered that many times; 0 for none), ``prefetch``, ``create_wait``
    (seconds the handle that creates the queue pauses before its first enqueue; 0 by
    default), ``timeout`` (seconds the broker may take to answer any one exchange, the
    connection's opening included, before the handle gives the connection up, as if it
    had dropped, and opens another; 20 by default).  ``lease`` only paces the batcher's
    renewals: a delivery is held until its channel closes.  With ``create=False`` nothing
    is declared: a missing queue raises :class:`~microbatching.errors.InvalidQueueError`.
    """

    capabilities = QueueCapabilities(
        lease_expiry=False,
        redelivery_on_disconnect=True,
        lease_per_claim=False,
        extend_any_length=False,
        idempotent_enqueue=False,
        exact_counts=False,
        blocking_claim=True,
    )
    client_errors = client_errors()

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        serializer: str | Serializer | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float | None = None,
        name: str | None = None,
        queue_type: str | None = None,
        delivery_limit: int | None = None,
        prefetch: int | None = None,
        create_wait: float | None = None,
        timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
        create: bool = True,
    ) -> None:
        self._given: dict[str, Any] = {"serializer": serializer, "lease": lease, "name": name,
            "queue_type": queue_type, "delivery_limit": delivery_limit, "prefetch": prefetch,
            "create_wait": create_wait, "timeout": timeout}  # fmt: skip
        client_url, client_options = _split_url(url)
        options = resolve_options(_with_query(url, client_options), _OPTIONS, self._given)
        super().__init__(
            serializer=options["serializer"], max_payload_bytes=max_payload_bytes,
            lease=options["lease"], create=create,
        )  # fmt: skip
        if options["queue_type"] not in ("quorum", "classic"):
            raise ValueError(f"queue_type must be 'quorum' or 'classic', got {options['queue_type']!r}")
        for option in ("delivery_limit", "prefetch"):
            if options[option] < 0:
                raise ValueError(f"{option} must be >= 0, got {options[option]!r}")
        if options["create_wait"] < 0:
            raise ValueError(f"create_wait must be >= 0 seconds, got {options['create_wait']!r}")
        self.url = url
        self.names = Layout(options["name"], options["queue_type"], options["delivery_limit"])
        self._client_url = client_url
        self._tls = tls
        self._prefetch = int(options["prefetch"])
        self._create_wait = float(options["create_wait"])
        self._timeout = _seconds("timeout", options["timeout"], positive=True)
        self._link: Link | None = None
        self._link_lock = asyncio.Lock()
        self._held: dict[int, DeliveredMessage] = {}  # delivery tag -> delivery, current epoch
        self._held_keys: dict[str, int] = {}  # job key -> the tag it is held under
        self._settling: set[int] = set()  # tags whose settle is under way
        self._topology_ready = False
        self._lost_logged = False
        self._idle_watch: asyncio.Task[None] | None = None
        self._idle_giving_back = False  # the idle watch is between storing copies and acknowledging
        _HANDLES.add(self)

    def _clone(self) -> RabbitMQQueue:
        given = {name: value for name, value in self._given.items() if value is not None}
        return RabbitMQQueue(self.url, max_payload_bytes=self.max_payload_bytes, tls=self._tls,
                             create=self.create, **given)  # fmt: skip

    # -- the connection -----------------------------------------------------------------------

    async def _connected(self, *, declare: bool = True) -> Link:
        link = self._link
        if link is not None and not link.broken and (self._topology_ready or not declare):
            return link
        async with self._link_lock:
            if self._link is None or self._link.broken:
                if self._link is not None:
                    await self._link.close()
                options: dict[str, Any] = {} if self._tls is None else {"ssl_context": self._tls, "ssl": True}
                self._link = await Link.open(self._client_url, self.names.name, self._lost, self._timeout,
                                             **options)  # fmt: skip
                if self._lost_logged:
                    logger.warning("%r reconnected", self)
                    self._lost_logged = False
            if declare:
                await self._link.within(self._topology(self._link))
            return self._link

    def _lost(self, exc: BaseException | None) -> None:
        """The consuming channel closed: every delivery on it is the broker's again."""
        self._epoch += 1
        self._held.clear()
        self._held_keys.clear()
        self._settling.clear()
        if not self._closed and not self._lost_logged:
            self._lost_logged = True
            logger.warning("%r lost its connection (%s); its deliveries go back to the queue; reconnecting",
                           self, exc)  # fmt: skip

    async def _topology(self, link: Link) -> None:
        if self._topology_ready:
            return
        channel = await link.connection.channel(publisher_confirms=False)
        try:
            raw = await channel.get_underlay_channel()
            try:
                await raw.queue_declare(self.names.name, passive=True)
                existed = True
            except aiormq.exceptions.ChannelNotFoundEntity:
                if not self.create:
                    raise InvalidQueueError(f"no queue {self.names.name!r} on {redact(self.url)}") from None
                existed = False
                await channel.reopen()
                raw = await channel.get_underlay_channel()
            if self.create:
                await self._declare(raw)
            if not existed and self._create_wait:
                await asyncio.sleep(self._create_wait)
        finally:
            if not channel.is_closed:
                await channel.close()
        self._topology_ready = True

    async def _declare(self, raw: aiormq.abc.AbstractChannel) -> None:
        for queue, arguments in self.names.arguments().items():
            try:
                await raw.queue_declare(queue, durable=True, arguments=arguments)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise InvalidQueueError(
                    f"{self!r}: a queue {queue!r} exists with other settings than this queue's ({exc})"
                ) from exc

    # -- producing --------------------------------------------------------------------------------

    async def _enqueue(self, messages: list[Message]) -> int:
        link = await self._connected()
        now = time.time()
        out = []
        for message in messages:
            headers: dict[str, Any] = {_KEY: message.key}
            out.append(self._publish(frame(message.job_id, message.payload), headers, message.key,
                                     now + message.delay if message.delay > 0 else None))  # fmt: skip
        await link.publish_all(out)
        return len(messages)

    def _publish(self, body: bytes, headers: dict[str, Any], message_id: str, due: float | None) -> Publish:
        """The publish storing a job: into the main queue, or the delay level that holds it until ``due``."""
        routing_key, expiration = self.names.name, None
        if due is not None:
            headers[_DUE] = repr(due)
            routing_key, ms = self.names.level_for(max(0.0, due - time.time()))
            expiration = str(ms)
        properties = aiormq.spec.Basic.Properties(
            delivery_mode=2, message_id=message_id, headers=headers, expiration=expiration
        )
        return Publish(routing_key, body, properties)

    # -- claiming ---------------------------------------------------------------------------------

    async def _claim(self, limit: int, lease: float, max_attempts: int | None, wait: float) -> list[Claimed]:
        link = await self._connected()
        link.last_claim = time.monotonic()
        if self._closed:  # closing: what the broker pushes now would only go back
            return []
        await self._open_window(link, limit, wait)
        if len(link.buffer) < limit:
            await self._await_deliveries(link, wait, limit)
        if link.broken or self._closed:
            return []
        claim = self._sort([link.buffer.popleft() for _ in range(min(limit, len(link.buffer)))], max_attempts)
        rows = await self._alone_if_suspect(link, claim.rows)
        await self._put_aside(claim)
        return rows

    async def _open_window(self, link: Link, limit: int, wait: float) -> None:
        """Start consuming at a handle's first claim; widen the window when this claim needs it."""
        if not link.consuming:
            # The first claim of a batcher asks for what it can run: batch_size * (concurrency + 1).
            await link.consume(self.names.name, self._prefetch or limit)
            self._watch_idle()
        elif not self._prefetch and (extra := self._window_short_by(link, limit, wait)):
            await link.consume(self.names.name, extra)

    def _sort(self, deliveries: list[DeliveredMessage], max_attempts: int | None) -> _Sorted:
        """Hold each delivery and sort it: a job to hand out, a duplicate, early, or out of attempts."""
        claim = _Sorted()
        for delivery in deliveries:
            self._sort_one(delivery, max_attempts, claim)
        return claim

    def _sort_one(self, delivery: DeliveredMessage, max_attempts: int | None, claim: _Sorted) -> None:
        held = self._lease(delivery)
        self._held[_tag(delivery)] = delivery
        if self._held_keys.get(held.key, -1) in self._held:
            # A second copy of a job held here (a copy stored before its original's
            # acknowledgement was lost): it goes back to the queue, its attempt undone,
            # rather than beside its twin (a batcher tracks a job by its key).
            claim.duplicates.append(held)
            return
        self._held_keys[held.key] = _tag(delivery)
        if _due(delivery) > time.time() + _EARLY:
            claim.early.append(held)  # a delay longer than the top level: it waits again
        elif max_attempts is not None and held.attempts > max_attempts:
            # Its last attempt ended without an outcome: the worker died or stalled with it.
            claim.exhausted.append((_spent(held), worker_lost(held.attempts - 1), None))
        else:
            job_id, payload = unframe(delivery.body)
            claim.rows.append(Claimed(held, job_id, payload))

    async def _alone_if_suspect(self, link: Link, rows: list[Claimed]) -> list[Claimed]:
        """``rows``, or only the first suspect among them, the rest given back unspent.

        A job whose consumer died with it before may kill this one: it is handed out alone
        (a batcher runs it alone), with nothing else held here to share its fate (a crash
        counts a delivery on each).  The consumer stops until the next claim.
        """
        suspect = next((row for row in rows if row.lease.recovered >= _SUSPECT_AFTER), None)
        if suspect is None:
            return rows
        await self._give_back_buffered(link)
        await self._release([row.lease for row in rows if row is not suspect])
        return [suspect]

    async def _put_aside(self, claim: _Sorted) -> None:
        """What a claim does not hand out: duplicates back unspent, early jobs back to wait
        (unspent), and jobs out of attempts to the dead letters."""
        if claim.duplicates:
            duplicates = self._live(claim.duplicates)
            await self._replace(duplicates, [(lease, lease.attempts - 1, None) for lease in duplicates])
        if claim.early:
            early = self._live(claim.early)
            await self._replace(early, [(lease, lease.attempts - 1, _due_of(lease)) for lease in early])
        if claim.exhausted:
            await self._dead_letter(claim.exhausted)

    def _window_short_by(self, link: Link, limit: int, wait: float) -> int:
        """How much wider the window must be for this claim: 0 but for a claim larger than it,
        or one that will not wait while the caller holds a full window of claimed jobs.

        A batcher does neither (it claims what it can run, and waits while its settles are
        on their way); a caller that claims without settling does.
        """
        if limit > link.prefetch:
            return limit - link.prefetch
        if wait <= 0 and not link.room and not link.buffer and len(self._held) >= link.prefetch:
            return limit
        return 0

    async def _await_deliveries(self, link: Link, wait: float, limit: int) -> None:
        """Wait up to ``wait`` for a delivery; with no wait, for one the broker is about to push.

        Deliveries are pushed: an empty buffer does not mean an empty queue.  Asked not to
        wait, a claim with room in its prefetch window still waits (a little) while the
        broker counts ready jobs, so a draining batcher sees its own jobs still queued.
        """
        if link.buffer:
            wait = 0.0
        elif wait <= 0:
            if not link.room or not (await link.ready_counts([self.names.name]))[0]:
                return
            wait = _PUSH_GRACE
        link.arrived.clear()
        try:
            await asyncio.wait_for(link.arrived.wait(), wait)
        except asyncio.TimeoutError:
            pass
        # The first delivery came: the rest of the window follows within moments.
        settled_at = time.monotonic() + _TRICKLE
        while len(link.buffer) < min(limit, len(link.buffer) + link.room) and time.monotonic() < settled_at:
            before = len(link.buffer)
            await asyncio.sleep(0.001)
            if len(link.buffer) == before:
                break

    def _watch_idle(self) -> None:
        if self._idle_watch is None or self._idle_watch.done():
            self._idle_watch = asyncio.get_running_loop().create_task(self._give_back_when_idle())

    async def _give_back_when_idle(self) -> None:
        """Deliveries no claim takes for ``_IDLE`` seconds go back to the queue, the consumer stopped.

        A handle that stopped claiming would otherwise sit on what the broker pushed it.
        """
        while not self.closed:
            await asyncio.sleep(_IDLE / 2)
            link = self._link
            if link is None or link.broken or not link.consuming:
                continue
            if time.monotonic() - link.last_claim >= _IDLE:
                self._idle_giving_back = True
                try:
                    await self._give_back_buffered(link)
                except self.client_errors as exc:
                    logger.warning("%r: giving back unclaimed deliveries failed (%s)", self, exc)
                finally:
                    self._idle_giving_back = False

    def _lease(self, delivery: DeliveredMessage) -> Lease:
        headers = delivery.header.properties.headers or {}
        returned = delivery_count(delivery)
        key = str(headers.get(_KEY) or delivery.header.properties.message_id or delivery.delivery_tag)
        attempts = _int(headers.get(_ATTEMPTS)) + returned + 1
        recovered = _int(headers.get(_RECOVERED)) + returned
        token = f"{self._epoch}.{delivery.delivery_tag}"
        return Lease(key, token, attempts, recovered, delivery, self._epoch)

    # -- settling ---------------------------------------------------------------------------------

    def _live(self, leases: list[Lease]) -> list[Lease]:
        """The leases still held on this channel and not being settled already (a tag acknowledged
        twice would close the channel), now marked as being settled.

        Their tags leave the consumer's window at once, and their keys stop counting as held:
        a copy this settle stores is not a duplicate of them.
        """
        live = [
            lease for lease in leases
            if lease.epoch == self._epoch and lease.ref.delivery_tag in self._held
            and lease.ref.delivery_tag not in self._settling
        ]  # fmt: skip
        for lease in live:
            self._settling.add(lease.ref.delivery_tag)
            if self._held_keys.get(lease.key) == lease.ref.delivery_tag:
                del self._held_keys[lease.key]
        if self._link is not None:
            self._link.window.difference_update(lease.ref.delivery_tag for lease in live)
        return live

    async def _finish(self, leases: list[Lease]) -> int:
        """Acknowledge the leases (marked as being settled by ``_live``)."""
        live = [
            lease for lease in leases if lease.epoch == self._epoch and lease.ref.delivery_tag in self._held
        ]
        if not live:
            return 0
        link = await self._connected()
        if link.broken or any(lease.epoch != self._epoch for lease in live):
            return 0
        tags = [lease.ref.delivery_tag for lease in live]
        for tag in tags:
            self._held.pop(tag, None)
            self._settling.discard(tag)
        await link.ack(tags)
        return len(tags)

    async def _settle(self, leases: list[Lease]) -> int:
        """Acknowledge leases not yet marked as being settled."""
        return await self._finish(self._live(leases))

    async def _ack(self, leases: list[Lease]) -> int:
        return await self._settle(leases)

    async def _retry(self, leases: list[Lease], delays: list[float]) -> int:
        now = time.time()
        pairs = {lease.token: delay for lease, delay in zip(leases, delays, strict=True)}
        live = self._live(leases)
        copies = [(lease, lease.attempts, now + pairs[lease.token] if pairs[lease.token] > 0 else None)
                  for lease in live]  # fmt: skip
        return await self._replace(live, copies)

    async def _release(self, leases: list[Lease]) -> int:
        live = self._live(leases)
        return await self._replace(live, [(lease, lease.attempts - 1, None) for lease in live])

    async def _replace(self, leases: list[Lease], copies: list[tuple[Lease, int, float | None]]) -> int:
        """Publish each job again (attempts spent so far, due time if delayed), then drop its original."""
        if not leases:
            return 0
        out = []
        for lease, attempts, due in copies:
            headers = {_KEY: lease.key, _ATTEMPTS: attempts, _RECOVERED: lease.recovered}
            out.append(self._publish(lease.ref.body, headers, lease.key, due))
        return await self._publish_then_finish(out, leases)

    async def _dead_letter(self, entries: list[tuple[Lease, str, str | None]]) -> int:
        live = {lease.token for lease in self._live([lease for lease, _, _ in entries])}
        entries = [entry for entry in entries if entry[0].token in live]
        if not entries:
            return 0
        now = time.time()
        records = []
        for lease, error, trace in entries:
            headers: dict[str, Any] = {_KEY: lease.key, _ATTEMPTS: lease.attempts, _ERROR: error,
                                       _FAILED_AT: repr(now)}  # fmt: skip
            if trace is not None:
                headers[_TRACEBACK] = trace[-_TRACEBACK_LIMIT:]
            properties = aiormq.spec.Basic.Properties(
                delivery_mode=2, message_id=uuid.uuid4().hex, headers=headers
            )
            records.append(Publish(self.names.dead, lease.ref.body, properties))
        return await self._publish_then_finish(records, [lease for lease, _, _ in entries])

    async def _publish_then_finish(self, messages: list[Publish], leases: list[Lease]) -> int:
        """Store ``messages`` (confirmed), then acknowledge the leases they replace.

        If either fails, the leases are no longer being settled: a later call may settle them.
        """
        try:
            link = await self._connected()
            await link.publish_all(messages)
            return await self._finish(leases)
        except BaseException:
            self._settling.difference_update(lease.ref.delivery_tag for lease in leases)
            raise

    async def _extend(self, leases: list[Lease], lease: float) -> int:
        # A delivery is held until its channel closes: there is nothing to renew.
        return sum(lease.epoch == self._epoch and lease.ref.delivery_tag in self._held for lease in leases)

    # -- stats and dead letters ---------------------------------------------------------------------

    async def _counts(self, queues: list[str]) -> list[tuple[int, int]]:
        link = await self._connected()
        try:
            return await link.declared(queues)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise InvalidQueueError(f"{self!r}: a queue of it is missing ({exc})") from exc

    async def _stats(self) -> QueueStats:
        names = self.names
        (ready, consumers), (dead, _), *delayed = await self._counts(names.all_queues)
        in_flight = self._local_in_flight(consumers)
        for _ in range(_CLOSING_LOOKS):
            if in_flight is not None or ready:
                break
            # A consumer whose connection just died is counted until the broker has closed it
            # (and taken its deliveries back): look again once it has had the time to.
            await asyncio.sleep(_CLOSING_CONSUMER)
            (ready, consumers), (dead, _), *delayed = await self._counts(names.all_queues)
            in_flight = self._local_in_flight(consumers)
        return QueueStats(pending=ready, delayed=sum(count for count, _ in delayed), in_flight=in_flight,
                          done=None, dead=dead, oldest_age=None)  # fmt: skip

    def _local_in_flight(self, consumers: int) -> int | None:
        """The deliveries held unacknowledged, when every consumer of the queue is in this process.

        AMQP counts ready messages only (held ones are the management API's); but a handle
        knows what it holds, so with no consumer elsewhere the count is exact.  ``None``
        otherwise.
        """
        mine = [
            q for q in list(_HANDLES) if q.names.name == self.names.name and q._client_url == self._client_url
        ]
        links = [q._link for q in mine if q._link is not None and not q._link.broken]
        if consumers != sum(len(link.consumer_tags) for link in links):
            return None
        return sum(len(q._held) for q in mine) + sum(len(link.buffer) for link in links)

    @contextlib.asynccontextmanager
    async def _reading_dead(self, limit: int | None) -> AsyncIterator[_DeadRead]:
        """The first ``limit`` dead letters (all, for ``None``), held unacknowledged while inside.

        Leaving closes the reading channel, which puts back every one not acknowledged, and
        returns once the broker counts them ready again (at most ``_DEAD_BACK`` seconds): a
        listing neither loses dead letters nor leaves them briefly uncounted.
        """
        ((before, _),) = await self._counts([self.names.dead])
        link = await self._connected()
        channel = await link.within(link.connection.channel(publisher_confirms=False))
        read = _DeadRead(await channel.get_underlay_channel(), link)
        try:
            await read.take(self.names.dead, _DEAD_READ_MAX if limit is None else limit, bool(before))
            yield read
        finally:
            await read.acks.grace_before_close()
            await link.within(channel.close())
        await self._dead_back(before - read.acked)

    async def _dead_back(self, expected: int) -> None:
        """Wait until the dead-letter queue counts ``expected`` ready, or ``_DEAD_BACK`` passed.

        The broker returns a closed channel's deliveries after the close is confirmed.
        """
        deadline = time.monotonic() + _DEAD_BACK
        while time.monotonic() < deadline:
            ((ready, _),) = await self._counts([self.names.dead])
            if ready >= expected:
                return
            await asyncio.sleep(0.01)

    async def _dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        async with self._reading_dead(limit) as read:
            return [_stored_dead(message) for message in read.found]

    async def _requeue_dead(self, keys: list[str] | None) -> int:
        async with self._reading_dead(None) as read:
            chosen = _chosen(read.found, keys)
            now = time.time()
            link = await self._connected()
            copies = []
            for message in chosen:
                headers = message.header.properties.headers or {}
                key = str(headers.get(_KEY) or message.header.properties.message_id)
                copies.append(
                    self._publish(message.body, {_KEY: key, "mb-requeued-at": repr(now)}, key, None)
                )
            # Stored again first, then removed from the dead letters: a failure in between
            # duplicates, never loses.
            await link.publish_all(copies)
            return await read.ack(chosen)

    async def _purge_dead(self, keys: list[str] | None) -> int:
        if keys is None:
            link = await self._connected()
            return await link.within(self._purge_all_dead(link))
        async with self._reading_dead(None) as read:
            return await read.ack(_chosen(read.found, keys))

    # -- lifecycle ----------------------------------------------------------------------------------

    async def _purge_all_dead(self, link: Link) -> int:
        async with link.own_channel() as raw:
            ok = await raw.queue_purge(self.names.dead)
            return int(ok.message_count or 0)

    async def _drop(self) -> None:
        link = await self._connected(declare=False)
        await link.within(self._delete_all(link))
        self._topology_ready = False

    async def _delete_all(self, link: Link) -> None:
        async with link.own_channel() as raw:
            for queue in self.names.all_queues:
                await raw.queue_delete(queue)

    async def _close(self) -> None:
        watch, self._idle_watch = self._idle_watch, None
        if watch is not None:
            if not self._idle_giving_back:  # cut between its copies and its acks, it would duplicate
                watch.cancel()  # otherwise it ends once its give-back is done: the handle is closed
            await asyncio.gather(watch, return_exceptions=True)
        link = self._link
        if link is None:
            return
        try:
            if not link.broken:  # each exchange bounded by the timeout, as always
                await self._give_back_buffered(link)
        except self.client_errors as exc:  # closing anyway: what it holds goes back counted
            logger.warning("%r: giving back unclaimed deliveries at close failed (%s); they go back counted "
                           "as a delivery", self, str(exc) or type(exc).__name__)  # fmt: skip
        finally:
            self._link = None
            self._held.clear()  # the broker hands out again whatever is still held here
            self._held_keys.clear()
            self._settling.clear()
            await link.close()

    async def _give_back_buffered(self, link: Link) -> None:
        """Deliveries the broker sent that no claim took: given back with their attempt undone.

        Left to the channel's close, each would come back counted as a delivery.
        """
        await self._stop_consuming(link)
        buffered = list(link.buffer)
        link.buffer.clear()
        if buffered:
            leases = [self._lease(delivery) for delivery in buffered]
            for delivery in buffered:
                self._held[_tag(delivery)] = delivery
            await self._release(leases)

    async def _stop_consuming(self, link: Link) -> None:
        """Cancel the consumers once no delivery can be on its way to them (``_QUIESCE`` s at most).

        RabbitMQ drops a quorum-queue delivery that reaches the channel after its consumer
        was cancelled: it stays checked out to the channel, and comes back counted as a
        delivery when the channel closes, an attempt spent by a job no worker saw.  After
        a settle frees room in the window, the broker may be sending jobs already.  None
        is on its way once the window is full, or once the queue counts nothing ready and
        a round trip on the consuming channel brought nothing more.
        """
        deadline = time.monotonic() + _QUIESCE
        while link.room and not link.broken and time.monotonic() < deadline:
            if await self._nothing_on_its_way(link):
                break
        await link.cancel()

    async def _nothing_on_its_way(self, link: Link) -> bool:
        """One look: ``True`` when the queue counts nothing ready and a barrier brought nothing."""
        try:
            (ready,) = await link.ready_counts([self.names.name])
        except aiormq.exceptions.ChannelNotFoundEntity:
            return True  # the queue was deleted: nothing more comes from it
        if ready:
            await asyncio.sleep(_QUIESCE_POLL)  # the broker fills the window with them
            return False
        before = link.delivered
        await link.barrier()
        return link.delivered == before


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The client's URL (its own options kept in the query) and the client options taken from it."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    client = [(name, value) for name, value in pairs if name in _CLIENT_OPTIONS]
    client_url = urlunsplit(parts._replace(query=urlencode(client)))
    return client_url, dict(client)


def _with_query(url: str, client_options: dict[str, str]) -> str:
    """``url`` with only the queue's own options in its query."""
    parts = urlsplit(url)
    own = [(n, v) for n, v in parse_qsl(parts.query, keep_blank_values=True) if n not in client_options]
    return urlunsplit(parts._replace(query=urlencode(own)))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _tag(delivery: DeliveredMessage) -> int:
    return int(delivery.delivery_tag or 0)


def _due(delivery: DeliveredMessage) -> float:
    headers = delivery.header.properties.headers or {}
    due = headers.get(_DUE)
    try:
        return float(due) if isinstance(due, str) else 0.0
    except ValueError:
        return 0.0


def _due_of(lease: Lease) -> float:
    return _due(lease.ref)


def _spent(lease: Lease) -> Lease:
    """The lease of a job whose last attempt ended without an outcome: its attempts are those spent."""
    return Lease(lease.key, lease.token, lease.attempts - 1, lease.recovered, lease.ref, lease.epoch)


def _stored_dead(message: DeliveredMessage) -> StoredDeadLetter:
    properties = message.header.properties
    headers = properties.headers or {}
    job_id, payload = unframe(message.body)
    error = headers.get(_ERROR)
    attempts = _int(headers.get(_ATTEMPTS))
    if error is None:  # dead-lettered by the broker itself: past the queue's x-delivery-limit
        reason = str(headers.get("x-first-death-reason", "delivery_limit"))
        attempts += delivery_count(message) or 1
        error = f"DeliveryLimit: RabbitMQ dead-lettered the job ({reason}) after {attempts} deliveries"
    failed_at = headers.get(_FAILED_AT)
    at = float(failed_at) if isinstance(failed_at, str) else time.time()
    trace = headers.get(_TRACEBACK)
    return StoredDeadLetter(str(properties.message_id), job_id, payload, attempts, str(error), at,
                            trace if isinstance(trace, str) else None)  # fmt: skip


def _chosen(found: list[DeliveredMessage], keys: list[str] | None) -> list[DeliveredMessage]:
    if keys is None:
        return found
    wanted = set(keys)
    return [message for message in found if str(message.header.properties.message_id) in wanted]


@dataclass
class _Sorted:
    """The deliveries of one claim, sorted: what it hands out and what it puts aside."""

    rows: list[Claimed] = field(default_factory=list)
    duplicates: list[Lease] = field(default_factory=list)
    early: list[Lease] = field(default_factory=list)
    exhausted: list[tuple[Lease, str, str | None]] = field(default_factory=list)


class _DeadRead:
    """Dead letters delivered on one channel and held there; the ones acknowledged are gone."""

    def __init__(self, raw: Any, link: Link) -> None:
        self.raw, self._link = raw, link
        self.found: list[DeliveredMessage] = []
        self.acked = 0
        self.acks = Acknowledgements()

    async def take(self, queue: str, wanted: int, any_ready: bool) -> None:
        """Receive up to ``wanted`` deliveries from ``queue``; stop once none came for a moment."""
        arrived = asyncio.Event()

        async def on_message(message: DeliveredMessage) -> None:
            self.acks.delivered(_tag(message))
            self.found.append(message)
            arrived.set()

        await self._link.within(self.raw.basic_qos(prefetch_count=min(wanted, _DEAD_READ_MAX)))
        ok = await self._link.within(self.raw.basic_consume(queue, on_message, no_ack=False))
        while len(self.found) < wanted:
            # The count may miss dead letters another reader is just putting back: wait
            # longer for the first one when some were counted.
            quiet = _DEAD_QUIET_FIRST if any_ready and not self.found else _DEAD_QUIET
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), quiet)
            except asyncio.TimeoutError:
                break
        await self._link.within(self.raw.basic_cancel(ok.consumer_tag))
        del self.found[wanted:]

    async def ack(self, messages: list[DeliveredMessage]) -> int:
        await self._link.within(self._ack(messages))
        self.acked += len(messages)
        return len(messages)

    async def _ack(self, messages: list[DeliveredMessage]) -> None:
        await self.acks.write(self.raw, map(_tag, messages))
        await self.raw.basic_qos(prefetch_count=0)  # one round trip: the acknowledgements were read
