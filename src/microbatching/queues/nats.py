"""NatsQueue: a durable queue on NATS JetStream, shared by any number of workers.

What it keeps on the server, for a queue whose ``stream`` is ``S`` and ``consumer`` ``C``:

- stream ``S`` (work-queue retention, file storage) on the subjects ``mb.S.ready`` (jobs
  to hand out) and ``mb.S.delayed`` (jobs waiting out a delay);
- the durable pull consumers ``C`` on ``mb.S.ready``, shared by every worker, whose
  ``AckWait`` is the lease, and ``C-delayed`` on ``mb.S.delayed``;
- stream ``S-dead`` (limits retention, file storage): the dead letters;
- stream ``S-tally`` (one message kept): counts the jobs stored again by a retry, a
  release or the end of a delay, so ``stats().done`` can be derived from the sequences.

A message is never changed in place.  A retry or a release stores a copy carrying the
attempts spent so far (headers ``Mb-Attempts``, ``Mb-Recovered``) and then acknowledges
the original; a job's attempts are those of its earlier copies plus the broker's delivery
count of this one, so a job that kills its worker is counted by the broker.  A delayed
copy waits on ``mb.S.delayed``, held back by JetStream itself (a NAK with the remaining
delay) until a worker moves it to ``mb.S.ready``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import InvalidQueueError
from ._base import ClaimQueue
from ._jetstream import BrokerError, Delivery, Wire, client_errors
from ._nats_layout import (
    ATTEMPTS,
    DUE,
    ENQUEUED,
    KEY,
    MSG_ID,
    RECOVERED,
    Held,
    Layout,
    connect_options,
    dead_letter,
    dead_record,
    frame,
    number,
    positive,
    query_names,
    server_url,
    unframe,
    unix,
)  # fmt: skip
from ._registry import redact, resolve_options
from ._serialization import DEFAULT_MAX_PAYLOAD_BYTES, Serializer
from ._table import worker_lost
from ._types import Claimed, Lease, Message, QueueCapabilities, QueueStats, StoredDeadLetter

__all__ = ["NatsQueue"]

logger = logging.getLogger("microbatching")

#: The options a URL's query may carry, with their types and defaults ("" = not set).
_OPTIONS: dict[str, tuple[type, Any]] = {
    "serializer": (str, "json"),
    "lease": (float, 30.0),
    "stream": (str, "microbatching"),
    "consumer": (str, "workers"),
    "duplicate_window": (float, 120.0),
    "replicas": (int, 1),
    "timeout": (float, 5.0),
    "token": (str, ""),
    "creds": (str, ""),
    "nkey": (str, ""),
    "tls_ca": (str, ""),
    "tls_cert": (str, ""),
    "tls_key": (str, ""),
    "tls_hostname": (str, ""),
}
_STREAM_NOT_FOUND, _CONSUMER_NOT_FOUND, _STREAM_IN_USE, _NO_MESSAGE = 10059, 10014, 10058, 10037
_SUBJECTS_OVERLAP = 10065
_CREATE_TRIES = 40  # 2 s of asking again while a stream is being created elsewhere
_CHUNK = 5000  # messages per pipelined publish
_READ_CHUNK = 256  # dead letters read per pipelined wave
_PRUNE_AT = 10_000  # held deliveries recorded before the expired ones are forgotten
_PROMOTE_BATCH = 256
_PROMOTE_WAIT = 1.0
_ERROR_PAUSE = 0.5


class NatsQueue(ClaimQueue):
    """A durable queue on NATS JetStream: ``NatsQueue("nats://localhost:4222?stream=emails")``.

    Jobs wait in a work-queue stream with file storage; every worker claims from one
    durable pull consumer in bulk; the lease is the consumer's ``AckWait``, renewed with
    in-progress acknowledgements; acknowledgements go out in bulk, confirmed by one
    PING/PONG.  Failed jobs go to the ``<stream>-dead`` stream with their last error and
    traceback.  See the module docstring for what lives on the server.

    ``lease`` sets the consumer's ``AckWait`` (every worker of the queue shares it: a
    handle given a lease sets it, one given none adopts the consumer's).  ``stream`` and
    ``consumer`` name the queue; ``duplicate_window`` is how long JetStream remembers
    message ids (a repeated enqueue inside it stores nothing); ``replicas`` is the
    streams' replication in a cluster; ``timeout`` bounds each request.  Credentials go
    in the URL (``nats://user:password@host``, ``?token=``, ``?creds=file``,
    ``?nkey=seed-file``); ``tls://`` URLs use TLS (``tls_ca``, ``tls_cert``, ``tls_key``,
    ``tls_hostname``, or pass an ``ssl.SSLContext`` as ``tls``).  With ``create=False``
    nothing is created: a missing queue raises
    :class:`~microbatching.errors.InvalidQueueError`.
    """

    capabilities = QueueCapabilities(
        lease_tokens=False,
        lease_per_claim=False,
        extend_any_length=False,
        idempotent_enqueue=False,
        exact_counts=False,
        blocking_claim=True,
    )
    client_errors = client_errors()

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        serializer: str | Serializer | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
        lease: float | None = None,
        stream: str | None = None,
        consumer: str | None = None,
        duplicate_window: float | None = None,
        replicas: int | None = None,
        timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
        create: bool = True,
    ) -> None:
        self._given: dict[str, Any] = {"serializer": serializer, "lease": lease, "stream": stream,
            "consumer": consumer, "duplicate_window": duplicate_window, "replicas": replicas,
            "timeout": timeout}  # fmt: skip
        options = resolve_options(url, _OPTIONS, self._given)
        super().__init__(
            serializer=options["serializer"], max_payload_bytes=max_payload_bytes,
            lease=options["lease"], create=create,
        )  # fmt: skip
        self.url = url
        self.names = Layout(options["stream"], options["consumer"])
        self._lease_given = lease is not None or "lease" in query_names(url)
        self._window = positive("duplicate_window", options["duplicate_window"])
        self._replicas = int(options["replicas"])
        self._tls = tls
        self._wire = Wire(server_url(url), repr(self), positive("timeout", options["timeout"]),
                          connect_options(url, options, tls))  # fmt: skip
        self._use_ack_wait(self.lease)
        self._deadlines: dict[str, float] = {}  # lease token -> when its delivery expires (monotonic)
        self._topology_ready = False
        self._topology_lock = asyncio.Lock()
        self._claim_lock = asyncio.Lock()
        self._promoter: asyncio.Task[None] | None = None

    def _clone(self) -> NatsQueue:
        given = {name: value for name, value in self._given.items() if value is not None}
        return NatsQueue(self.url, max_payload_bytes=self.max_payload_bytes, tls=self._tls,
                         create=self.create, **given)  # fmt: skip

    def _use_ack_wait(self, seconds: float) -> None:
        """The consumer's AckWait: the lease, and the guard's margin derived from it.

        ``_margin`` is how long before a delivery expires its lease stops being settled.
        """
        self.lease = self._ack_wait = seconds
        self._margin = min(max(0.2 * seconds, 0.05), 5.0)

    # -- topology -----------------------------------------------------------------------------

    async def _topology(self) -> None:
        if self._topology_ready:
            return
        async with self._topology_lock:
            if not self._topology_ready:
                await (self._create() if self.create else self._check())
                self._topology_ready = True

    async def _create(self) -> None:
        configs = self.names.stream_configs(self._window, self._replicas)
        await asyncio.gather(*(self._create_stream(config) for config in configs))
        if not self._lease_given:  # adopt the lease the queue already has
            try:
                info = await self._wire.api(f"CONSUMER.INFO.{self.names.stream}.{self.names.consumer}")
                self._use_ack_wait(info["config"]["ack_wait"] / 1e9)
            except BrokerError as exc:
                if exc.err_code != _CONSUMER_NOT_FOUND:
                    raise
        self._use_ack_wait(self.lease)  # a lease set on the handle since it was made counts
        consumers = self.names.consumer_configs(self._ack_wait)
        answers = await self._wire.api_many(
            [(f"CONSUMER.DURABLE.CREATE.{self.names.stream}.{name}", body) for name, body in consumers]
        )
        for answer in answers:
            if isinstance(answer, BrokerError):
                raise InvalidQueueError(
                    f"{self!r}: cannot create the consumers of {self.names.stream}: {answer}"
                )
            if isinstance(answer, BaseException):
                raise answer

    async def _create_stream(self, config: dict[str, Any]) -> None:
        """Create a stream, or accept the one of that name if it is this queue's.

        Handles starting together race: while one creates the stream, another's create
        may be told the subjects overlap a stream it cannot see yet; it asks again.
        """
        name = config["name"]
        for _ in range(_CREATE_TRIES):
            try:
                await self._wire.api(f"STREAM.CREATE.{name}", config)
                return
            except BrokerError as exc:
                if exc.err_code not in (_STREAM_IN_USE, _SUBJECTS_OVERLAP):
                    raise
                failure = exc
            try:
                found = await self._wire.api(f"STREAM.INFO.{name}")
            except BrokerError as exc:
                if exc.err_code != _STREAM_NOT_FOUND:
                    raise
                await asyncio.sleep(0.05)  # another stream holds the subjects, or ours is being made
                continue
            self._check_stream(config, found["config"])
            return
        raise InvalidQueueError(f"{self!r}: cannot create the stream {name}: {failure}")

    def _check_stream(self, wanted: dict[str, Any], found: dict[str, Any]) -> None:
        if sorted(found.get("subjects", [])) != sorted(wanted["subjects"]) or (
            found.get("retention") != wanted["retention"]
        ):
            raise InvalidQueueError(
                f"{self!r}: a stream named {wanted['name']} exists that is not this queue's "
                f"(subjects {found.get('subjects')}, retention {found.get('retention')})"
            )

    async def _check(self) -> None:
        names = self.names
        answers = await self._wire.api_many(
            [(f"STREAM.INFO.{name}", None) for name in names.streams]
            + [(f"CONSUMER.INFO.{names.stream}.{names.consumer}", None)]
        )
        for answer in answers:
            if isinstance(answer, BrokerError) and answer.err_code in (
                _STREAM_NOT_FOUND,
                _CONSUMER_NOT_FOUND,
            ):
                raise InvalidQueueError(f"no queue {names.stream!r} on {redact(self.url)}: {answer}")
            if isinstance(answer, BaseException):
                raise answer
        for wanted, answer in zip(names.stream_configs(self._window, self._replicas), answers, strict=False):
            self._check_stream(wanted, answer["config"])
        self._use_ack_wait(answers[-1]["config"]["ack_wait"] / 1e9)

    # -- producing --------------------------------------------------------------------------------

    async def _enqueue(self, messages: list[Message]) -> int:
        await self._topology()
        now, ready, delayed = time.time(), self.names.subject("ready"), self.names.subject("delayed")
        out = []
        for message in messages:
            body = frame(message.job_id, message.payload)
            if message.delay > 0:
                out.append((delayed, body, {MSG_ID: message.key, DUE: repr(now + message.delay)}))
            else:
                out.append((ready, body, {MSG_ID: message.key}))
        stored = 0
        for start in range(0, len(out), _CHUNK):
            acks = await self._wire.publish_all(out[start : start + _CHUNK])
            stored += sum(not ack.get("duplicate") for ack in acks)
        return stored

    # -- claiming ---------------------------------------------------------------------------------

    async def _claim(self, limit: int, lease: float, max_attempts: int | None, wait: float) -> list[Claimed]:
        await self._topology()
        if self._promoter is None:
            self._promoter = asyncio.get_running_loop().create_task(self._promote_forever())
        if len(self._deadlines) > _PRUNE_AT:  # leases a batcher dropped without settling them
            now = time.monotonic()
            self._deadlines = {token: at for token, at in self._deadlines.items() if at > now}
        async with self._claim_lock:
            deliveries = await self._wire.pull(self.names.stream, self.names.consumer, limit, wait)
        rows: list[Claimed] = []
        exhausted: list[tuple[Lease, str, str | None]] = []
        for delivery in deliveries:
            claimed = self._hold(delivery)
            if claimed is None:
                continue
            attempts = claimed.lease.attempts
            if max_attempts is not None and attempts > max_attempts:
                # Its last attempt's lease ran out: the worker died or stalled with it.
                exhausted.append(
                    (replace(claimed.lease, attempts=attempts - 1), worker_lost(attempts - 1), None)
                )
            else:
                rows.append(claimed)
        if exhausted:
            await self._dead_letter(exhausted)
        return rows

    def _hold(self, delivery: Delivery) -> Claimed | None:
        """The claimed job of a delivery, its deadline recorded; None if it is already too old to hold."""
        deadline = delivery.arrived + self._ack_wait
        if deadline - self._margin <= time.monotonic():
            return None  # it sat too long in the inbox: it is redelivered, not handed out late
        msg = delivery.msg
        headers = msg.headers or {}
        delivered, seq = delivery.delivered, delivery.seq
        key = headers.get(KEY) or headers.get(MSG_ID) or f"seq-{seq}"
        enqueued = number(headers.get(ENQUEUED), delivery.stored_at)
        token = f"{seq}.{delivered}"
        self._deadlines[token] = deadline
        lease = Lease(
            key, token, int(number(headers.get(ATTEMPTS), 0)) + delivered,
            int(number(headers.get(RECOVERED), 0)) + delivered - 1, Held(msg.reply, seq, msg.data, enqueued),
        )  # fmt: skip
        job_id, payload = unframe(msg.data)
        return Claimed(lease, job_id, payload)

    # -- settling ---------------------------------------------------------------------------------

    def _live(self, leases: Sequence[Lease]) -> list[Lease]:
        """The leases whose deliveries are safely inside their AckWait; the others are given up.

        JetStream cannot refuse a late acknowledgement (one from a delivery that expired
        removes the message another worker now holds), so nothing is sent for a lease
        within ``_margin`` of its expiry: that job comes back by itself instead.
        """
        now, live, late = time.monotonic(), [], 0
        for lease in leases:
            deadline = self._deadlines.get(lease.token)
            if deadline is not None and deadline - self._margin > now:
                live.append(lease)
            elif deadline is not None:
                del self._deadlines[lease.token]
                late += 1
        if late:
            logger.warning(
                "%r: %d jobs outlived their lease here and were given up (they come back)", self, late
            )
        return live

    async def _send(self, leases: list[Lease], payloads: Sequence[bytes]) -> list[Lease]:
        """Send each lease's settle, again after a reconnect if need be, while the lease is live.

        Settling one delivery twice is harmless (the consumer ignores the second), so a
        settle whose confirmation was lost with the connection is simply sent again.
        """
        by_token = dict(zip((lease.token for lease in leases), payloads, strict=True))
        while True:
            leases = self._live(leases)
            if not leases:
                return []
            left = min(self._deadlines[lease.token] for lease in leases) - self._margin - time.monotonic()
            try:
                await self._wire.until_connected(max(0.0, left))
                replies = [lease.ref.reply for lease in leases]
                await self._wire.send(replies, [by_token[lease.token] for lease in leases], 0.0)
                return leases
            except self.client_errors:
                if left <= 0:
                    raise
                await asyncio.sleep(0.02)

    async def _finish(self, leases: list[Lease], verb: bytes) -> int:
        sent = await self._send(leases, [verb] * len(leases))
        for lease in sent:
            self._deadlines.pop(lease.token, None)
        return len(sent)

    async def _ack(self, leases: list[Lease]) -> int:
        return await self._finish(self._live(leases), b"+ACK")

    async def _retry(self, leases: list[Lease], delays: list[float]) -> int:
        live = {lease.token for lease in self._live(leases)}
        pairs = [(lease, delay) for lease, delay in zip(leases, delays, strict=True) if lease.token in live]
        now = time.time()
        await self._store_copies(
            [(lease, lease.attempts, now + delay if delay > 0 else None) for lease, delay in pairs]
        )
        return await self._finish(self._live([lease for lease, _ in pairs]), b"+ACK")

    async def _release(self, leases: list[Lease]) -> int:
        live = self._live(leases)
        await self._store_copies([(lease, lease.attempts - 1, None) for lease in live])  # the attempt undone
        return await self._finish(self._live(live), b"+ACK")

    async def _store_copies(self, copies: list[tuple[Lease, int, float | None]]) -> None:
        """Store each job again (attempts spent so far, due time if delayed) before its original goes."""
        messages = []
        for lease, attempts, due in copies:
            held: Held = lease.ref
            headers = {MSG_ID: f"{lease.key}@{held.seq}", KEY: lease.key, ATTEMPTS: str(attempts),
                       RECOVERED: str(lease.recovered), ENQUEUED: repr(held.enqueued)}  # fmt: skip
            if due is not None:
                headers[DUE] = repr(due)
            messages.append((self.names.subject("ready" if due is None else "delayed"), held.body, headers))
        await self._replace(messages)

    async def _replace(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
        # One tally message per copy (deduplicated with it) keeps stats().done derivable.
        tallies = [
            (self.names.subject("tally"), b"", {MSG_ID: headers[MSG_ID]}) for _, _, headers in messages
        ]
        await self._wire.publish_all(messages + tallies)

    async def _dead_letter(self, entries: list[tuple[Lease, str, str | None]]) -> int:
        live = {lease.token for lease in self._live([lease for lease, _, _ in entries])}
        entries = [entry for entry in entries if entry[0].token in live]
        now = time.time()
        records = [(self.names.subject("dead"), dead_record(lease, error, trace, now),
                    {MSG_ID: f"{lease.key}@{lease.ref.seq}"}) for lease, error, trace in entries]  # fmt: skip
        await self._wire.publish_all(records)
        return await self._finish(self._live([lease for lease, _, _ in entries]), b"+TERM")

    async def _extend(self, leases: list[Lease], lease: float) -> int:
        live = self._live(leases)
        sent_at = time.monotonic()
        sent = await self._send(live, [b"+WPI"] * len(live))
        for held in sent:  # the server restarts AckWait when the progress arrives, after sent_at
            self._deadlines[held.token] = sent_at + self._ack_wait
        return len(sent)

    # -- delayed jobs -------------------------------------------------------------------------------

    async def _promote_forever(self) -> None:
        """Move delayed jobs that are due to the ready subject; NAK the others with their remaining delay."""
        failing = False
        while not self.closed:  # closed: stop even if a cancellation was lost
            try:
                deliveries = await self._wire.pull(
                    self.names.stream, self.names.delayed_consumer, _PROMOTE_BATCH, _PROMOTE_WAIT
                )
                await self._promote(deliveries)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("%r: moving delayed jobs failed (%s); retrying", self, exc)
                failing = True
                await asyncio.sleep(_ERROR_PAUSE)

    async def _promote(self, deliveries: list[Delivery]) -> None:
        now_m, now = time.monotonic(), time.time()
        fresh = [d for d in deliveries if d.arrived + self._ack_wait - self._margin > now_m]
        due, replies, verbs = [], [], []
        for delivery in fresh:
            headers = delivery.msg.headers or {}
            at = number(headers.get(DUE), 0.0)
            replies.append(delivery.msg.reply)
            if at > now + 0.001:
                verbs.append(b'-NAK {"delay": %d}' % int((at - now) * 1e9))
            else:
                due.append(delivery)
                verbs.append(b"+ACK")
        if due:
            await self._replace([self._promoted(delivery) for delivery in due])
        if replies:
            await self._wire.send(replies, verbs, 0.0)

    def _promoted(self, delivery: Delivery) -> tuple[str, bytes, dict[str, str]]:
        msg = delivery.msg
        headers = {name: value for name, value in (msg.headers or {}).items() if name != DUE}
        seq = delivery.seq
        key = headers.get(KEY) or headers.get(MSG_ID) or f"seq-{seq}"
        headers.setdefault(ENQUEUED, repr(delivery.stored_at))
        headers.update({MSG_ID: f"{key}@{seq}", KEY: key})
        return self.names.subject("ready"), msg.data, headers

    # -- stats and dead letters ---------------------------------------------------------------------

    async def _stats(self) -> QueueStats:
        await self._topology()
        names = self.names
        work, consumer, tally, dead = await asyncio.gather(
            self._wire.api(f"STREAM.INFO.{names.stream}", {"subjects_filter": names.subject("delayed")}),
            self._wire.api(f"CONSUMER.INFO.{names.stream}.{names.consumer}"),
            self._wire.api(f"STREAM.INFO.{names.tally}"),
            self._wire.api(f"STREAM.INFO.{names.dead}"),
        )
        state = work["state"]
        delayed = int((state.get("subjects") or {}).get(names.subject("delayed"), 0))
        done = state["last_seq"] - state["messages"] - tally["state"]["last_seq"] - dead["state"]["last_seq"]
        oldest = unix(state.get("first_ts", "")) if state["messages"] else None
        return QueueStats(
            pending=int(consumer["num_pending"]),
            delayed=delayed,
            in_flight=int(consumer["num_ack_pending"]),
            done=max(0, int(done)),
            dead=int(dead["state"]["messages"]),
            oldest_age=None if oldest is None else max(0.0, time.time() - oldest),
        )

    async def _read_dead(
        self, limit: int | None, keys: list[str] | None = None
    ) -> list[tuple[StoredDeadLetter, str]]:
        """Dead letters, oldest first: the first ``limit``, or those named by ``keys``."""
        await self._topology()
        if keys is not None:
            chunks = [_seqs(keys)]
        else:
            state = (await self._wire.api(f"STREAM.INFO.{self.names.dead}"))["state"]
            first, last = state["first_seq"], state["last_seq"]
            wanted = range(first, last + 1) if state["messages"] else range(0)
            chunks = [list(wanted[at : at + _READ_CHUNK]) for at in range(0, len(wanted), _READ_CHUNK)]
        found: list[tuple[StoredDeadLetter, str]] = []
        for chunk in chunks:  # one pipelined wave of reads per chunk
            requests = [(f"STREAM.MSG.GET.{self.names.dead}", {"seq": seq}) for seq in chunk]
            for seq, answer in zip(chunk, await self._wire.api_many(requests), strict=True):
                if isinstance(answer, BrokerError) and answer.err_code == _NO_MESSAGE:
                    continue  # requeued or purged: sequences have gaps
                if isinstance(answer, BaseException):
                    raise answer
                found.append(dead_letter(seq, answer["message"]["data"]))
            if limit is not None and len(found) >= limit:
                return found[:limit]
        return found

    async def _dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        return [dead for dead, _ in await self._read_dead(limit)]

    async def _requeue_dead(self, keys: list[str] | None) -> int:
        dead = await self._read_dead(None, keys)
        if not dead:
            return 0
        now = time.time()
        # Stored again first (a fresh message id: the original's may still be remembered),
        # then removed from the dead letters: a failure in between duplicates, never loses.
        ready = self.names.subject("ready")
        await self._wire.publish_all([
            (ready, frame(d.job_id, d.payload), {MSG_ID: f"{key}@dead{d.key}", KEY: key, ENQUEUED: repr(now)})
            for d, key in dead
        ])  # fmt: skip
        return await self._remove_dead([int(d.key) for d, _ in dead], everything=keys is None)

    async def _purge_dead(self, keys: list[str] | None) -> int:
        if keys is None:
            await self._topology()
            return int((await self._wire.api(f"STREAM.PURGE.{self.names.dead}", {}))["purged"])
        return await self._remove_dead(_seqs(keys), everything=False)

    async def _remove_dead(self, seqs: list[int], everything: bool) -> int:
        if everything:  # below the last one read: a dead letter stored meanwhile stays
            answer = await self._wire.api(f"STREAM.PURGE.{self.names.dead}", {"seq": max(seqs) + 1})
            return int(answer["purged"])
        answers = await self._wire.api_many(
            [(f"STREAM.MSG.DELETE.{self.names.dead}", {"seq": s}) for s in seqs]
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not (
                isinstance(answer, BrokerError) and answer.err_code == _NO_MESSAGE
            ):
                raise answer
        return sum(isinstance(answer, dict) and bool(answer.get("success")) for answer in answers)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def _drop(self) -> None:
        names = self.names
        answers = await self._wire.api_many(
            [(f"STREAM.DELETE.{name}", None) for name in (names.stream, names.dead, names.tally)]
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not (
                isinstance(answer, BrokerError) and answer.err_code == _STREAM_NOT_FOUND
            ):
                raise answer
        self._topology_ready = False

    async def _close(self) -> None:
        promoter, self._promoter = self._promoter, None
        if promoter is not None:
            promoter.cancel()
            await asyncio.gather(promoter, return_exceptions=True)
        try:
            await self._give_back_orphans()
        finally:
            await self._wire.close()

    async def _give_back_orphans(self) -> None:
        """Deliveries of a pull request still open on the server: given back, not left to expire."""
        wire = self._wire
        if not wire.connected:
            return
        # A delayed job that arrives later just waits out its AckWait; a claimed one would
        # count as a lease lost, so the claim's request is waited out and given back.
        left = wire.lingering_until.get(self.names.consumer, 0.0) - time.monotonic()
        if left > 0:
            await asyncio.sleep(min(left + 0.05, _PROMOTE_WAIT + 0.1))
        ready = [c for c in map(self._hold, wire.orphans.pop(self.names.consumer, [])) if c is not None]
        if ready:
            await self._release([claimed.lease for claimed in ready])
        delayed = wire.orphans.pop(self.names.delayed_consumer, [])
        if delayed:
            await self._promote(delayed)


def _seqs(keys: list[str]) -> list[int]:
    """Dead-letter keys are their sequences in the dead-letter stream."""
    return [int(key) for key in keys if key.isdigit()]
