"""What is particular to RedisQueue: its keys, the scripts' ownership checks, leases on the
server's clock, round trips per batch, reconnecting, credentials, and a Redis restart.

The conformance suite and the fault tests run on it too (see tests/backends.py).  Tests on
the shared Redis (127.0.0.1:6379) use queues of their own and drop them; the tests that
count commands, restart Redis or need a password or TLS start a private redis-server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import BACKENDS
from redis_servers import PrivateRedis

from microbatching import AsyncMicroBatching, Job
from microbatching.errors import InvalidQueueError, MicroBatchingError, QueueError
from microbatching.queues import open_queue
from microbatching.queues._redis_scripts import KEYS

REDIS = next(backend for backend in BACKENDS if backend.name == "redis")
SHARED = "redis://127.0.0.1:6379/0"

try:
    import redis.asyncio
except ImportError:
    if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") == "1":
        raise
    pytest.skip("redis-py is not installed: pip install -e '.[redis]'", allow_module_level=True)


@pytest.fixture(autouse=True)
def _redis_available() -> None:
    REDIS.check_available()


@pytest.fixture
def name() -> str:
    return f"mb_redis_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def url(name: str) -> Iterator[str]:
    queue_url = f"{SHARED}?name={name}"
    yield queue_url
    asyncio.run(_drop(queue_url))


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


async def _drop(queue_url: str) -> None:
    queue = open_queue(queue_url)
    try:
        await queue.drop()
    finally:
        await queue.close()


async def _keys(name: str, server: str = SHARED) -> list[bytes]:
    client = redis.asyncio.Redis.from_url(server)
    try:
        return sorted([key async for key in client.scan_iter(match=f"microbatching:{{{name}}}:*")])
    finally:
        await client.aclose()


async def _raw(server: str = SHARED) -> AsyncIterator[Any]:
    client = redis.asyncio.Redis.from_url(server)
    try:
        yield client
    finally:
        await client.aclose()


def _messages(queue: Any, ids: range) -> list[Any]:
    return [queue.encode(Job(i, i)) for i in ids]


# -- URLs, keys and creation ----------------------------------------------------------------------


def test_the_url_carries_the_queue_options_and_the_clients() -> None:
    queue: Any = open_queue(
        "redis://127.0.0.1:6379/3?name=emails&lease=12.5&serializer=json&socket_timeout=7"
    )
    assert (queue.name, queue.lease, queue.serializer.name) == ("emails", 12.5, "json")
    assert queue._client_url == "redis://127.0.0.1:6379/3?socket_timeout=7"
    assert open_queue("rediss://example.invalid:6380/0").url.startswith("rediss://")
    queue.lease = 3.0
    clone = queue._clone()  # the handle put() opens: the same queue, the options as they are now
    assert (clone.url, clone.name, clone.lease) == (queue.url, "emails", 3.0)
    with pytest.raises(ValueError, match="unknown option 'colour'"):
        open_queue("redis://127.0.0.1/0?colour=blue")
    with pytest.raises(ValueError, match="given both in the URL"):
        open_queue("redis://127.0.0.1/0?lease=5", lease=6)
    with pytest.raises(ValueError, match="queue name"):
        open_queue("redis://127.0.0.1/0?name=a{b}")


def test_every_key_of_a_queue_is_in_one_cluster_slot() -> None:
    from redis.crc import key_slot

    queue: Any = open_queue("redis://127.0.0.1/0?name=orders")
    assert all(key.startswith("microbatching:{orders}:") for key in queue.keys)
    assert len({key_slot(key.encode()) for key in queue.keys}) == 1


def test_eight_workers_creating_the_queue_at_once_make_one(name: str, url: str) -> None:
    async def main() -> None:
        queues = [open_queue(url) for _ in range(8)]
        try:
            await asyncio.gather(*(queue.stats() for queue in queues))
            await queues[0].enqueue(_messages(queues[0], range(40)))
            claimed = await asyncio.gather(*(queue.claim(5, 30.0) for queue in queues))
            assert sorted(job.id for jobs in claimed for job in jobs) == list(range(40))
            async for client in _raw():
                groups = await client.xinfo_groups(f"microbatching:{{{name}}}:stream")
                assert [group["name"] for group in groups] == [b"workers"]
        finally:
            for queue in queues:
                await queue.close()

    asyncio.run(main())


def test_create_false_creates_nothing_and_names_a_missing_queue(name: str) -> None:
    async def main() -> None:
        queue = open_queue(f"{SHARED}?name={name}", create=False)
        try:
            for operation in (queue.stats(), queue.dead_letters(), queue.claim(1)):
                with pytest.raises(InvalidQueueError, match=f"no queue named '{name}'"):
                    await operation
        finally:
            await queue.close()
        assert await _keys(name) == []

    asyncio.run(main())


def test_create_false_opens_an_existing_queue(url: str) -> None:
    async def main() -> None:
        writer = open_queue(url)
        await writer.enqueue(_messages(writer, range(3)))
        await writer.close()
        reader = open_queue(url, create=False)
        try:
            assert (await reader.stats()).pending == 3
        finally:
            await reader.close()

    asyncio.run(main())


def test_a_queue_opened_with_another_serializer_is_refused(url: str) -> None:
    async def main() -> None:
        first = open_queue(url)
        await first.stats()
        await first.close()
        other = open_queue(url, serializer="pickle")
        try:
            with pytest.raises(InvalidQueueError, match="serializer='json'"):
                await other.stats()
        finally:
            await other.close()

    asyncio.run(main())


def test_named_queues_on_one_server_stay_apart(url: str) -> None:
    other_url = f"{SHARED}?name=mb_redis_{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        one, two = open_queue(url), open_queue(other_url)
        try:
            await one.enqueue(_messages(one, range(5)))
            await two.enqueue(_messages(two, range(100, 103)))
            assert sorted(job.id for job in await one.claim(10)) == list(range(5))
            assert sorted(job.id for job in await two.claim(10)) == [100, 101, 102]
        finally:
            await one.close()
            await two.close()
            await _drop(other_url)

    asyncio.run(main())


def test_drop_deletes_every_key_the_queue_made(name: str, url: str) -> None:
    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.enqueue(_messages(queue, range(6)))
            await queue.aput("later", delay=60)
            jobs = await queue.claim(6, 30.0)
            await queue.ack(jobs[:2])
            await queue.retry(jobs[2:3], [60.0])
            await queue.dead_letter([(jobs[3], "ValueError: no")])
            assert len(await _keys(name)) == 9
            await queue.drop()
            assert await _keys(name) == []
        finally:
            await queue.close()

    asyncio.run(main())


# -- the stream: acknowledged entries leave it, leases are the server's ---------------------------


def test_acknowledged_entries_are_deleted_from_the_stream(name: str, url: str) -> None:
    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.enqueue(_messages(queue, range(1000)))
            while jobs := await queue.claim(100, 30.0):
                assert await queue.ack(jobs) == len(jobs)
            async for client in _raw():
                prefix = f"microbatching:{{{name}}}:"
                assert await client.xlen(prefix + "stream") == 0
                assert (await client.xpending(prefix + "stream", "workers"))["pending"] == 0
                assert await client.zcard(prefix + "leases") == 0
                assert await client.zcard(prefix + "jobs") == 0
                assert await client.get(prefix + "done") == b"1000"
        finally:
            await queue.close()

    asyncio.run(main())


def test_a_lease_deadline_is_kept_on_the_servers_clock(name: str, url: str) -> None:
    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.enqueue(_messages(queue, range(1)))
            (job,) = await queue.claim(1, 10.0)
            async for client in _raw():
                seconds, micros = await client.time()
                deadline = await client.zscore(f"microbatching:{{{name}}}:leases", job.receipt.ref)
                server_now_ms = seconds * 1000 + micros // 1000
                assert deadline is not None and abs(deadline - (server_now_ms + 10_000)) < 500
        finally:
            await queue.close()

    asyncio.run(main())


def test_a_short_lease_elsewhere_does_not_take_a_job_held_under_a_long_one(url: str) -> None:
    # XAUTOCLAIM's min-idle-time is the reclaimer's: with it, a consumer using a 0.2 s lease
    # would take a job another consumer holds for 30 s.  The lease record is per claim.
    async def main() -> None:
        holder, hasty = open_queue(url), open_queue(url, lease=0.2)
        try:
            await holder.enqueue(_messages(holder, range(3)))
            held = await holder.claim(3, 30.0)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert await hasty.claim(3) == []
                await asyncio.sleep(0.1)
            assert await holder.ack(held) == 3
        finally:
            await holder.close()
            await hasty.close()

    asyncio.run(main())


def test_attempts_come_from_delivery_counts_and_survive_delayed_retries(name: str, url: str) -> None:
    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.enqueue(_messages(queue, range(1)))
            (job,) = await queue.claim(1, 0.2)
            assert job.attempts == 1
            await asyncio.sleep(0.3)
            (job,) = await queue.claim(1, 30.0)  # the lease ran out: delivered again
            assert (job.attempts, job.receipt.recovered) == (2, 1)
            first_entry = job.receipt.ref
            assert await queue.retry([job], [0.3]) == 1
            async for client in _raw():  # in one place only: parked, not in the stream
                prefix = f"microbatching:{{{name}}}:"
                assert await client.xlen(prefix + "stream") == 0
                assert await client.zcard(prefix + "delayed") == 1
                assert await client.hlen(prefix + "parked") == 1
            await asyncio.sleep(0.35)
            (job,) = await queue.claim(1, 30.0)
            assert (job.attempts, job.receipt.recovered) == (3, 1)
            assert job.receipt.ref != first_entry  # a new entry, its counts carried over
            assert await queue.release([job]) == 1
            (job,) = await queue.claim(1, 30.0)
            assert job.attempts == 3  # the release gave the attempt back
        finally:
            await queue.close()

    asyncio.run(main())


def test_stats_count_every_state(url: str) -> None:
    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.enqueue(_messages(queue, range(7)))
            await queue.aput("later", delay=60)
            jobs = await queue.claim(4, 30.0)
            await queue.ack(jobs[:1])
            await queue.dead_letter([(jobs[1], "ValueError: bad")])
            await queue.retry(jobs[2:3], [60.0])
            await asyncio.sleep(0.05)
            stats = await queue.stats()
            assert (stats.pending, stats.delayed, stats.in_flight, stats.done, stats.dead) == (3, 2, 1, 1, 1)
            assert stats.oldest_age is not None and stats.oldest_age >= 0.04
        finally:
            await queue.close()

    asyncio.run(main())


def test_dead_letters_are_listed_requeued_and_purged_by_their_entry_id(url: str) -> None:
    async def main() -> None:
        queue = open_queue(url)
        try:
            await queue.enqueue(_messages(queue, range(700)))
            jobs = await queue.claim(700, 30.0)
            assert await queue.dead_letter([(job, f"ValueError: {job.id}") for job in jobs]) == 700
            dead = await queue.dead_letters(1000)
            assert [d.job_id for d in dead] == [job.id for job in jobs]  # oldest first
            assert await queue.purge_dead([dead[0].key, dead[1].key]) == 2
            assert await queue.requeue_dead() == 698  # in slices of 500
            assert await queue.dead_letters() == []
            back = await queue.claim(1000, 30.0)
            assert sorted(job.id for job in back) == list(range(2, 700))
            assert {job.attempts for job in back} == {1}
        finally:
            await queue.close()

    asyncio.run(main())


# -- the race: a late settle from a worker whose lease ran out ------------------------------------


def test_a_plain_xack_would_remove_a_job_another_consumer_holds(name: str, url: str) -> None:
    # Why every settle is a script: XACK names no owner, so a late XACK from the consumer
    # whose lease ran out removes the entry from the consumer that took it over.
    async def main() -> None:
        async for client in _raw():
            stream = f"microbatching:{{{name}}}:probe"
            await client.xgroup_create(stream, "g", "0", mkstream=True)
            entry = await client.xadd(stream, {"x": "1"})
            await client.xreadgroup("g", "late", {stream: ">"})
            await client.xclaim(stream, "g", "current", 0, [entry])
            assert await client.xack(stream, "g", entry) == 1  # the late consumer's XACK...
            assert (await client.xpending(stream, "g"))["pending"] == 0  # ...took it from "current"
            await client.delete(stream)

    asyncio.run(main())


def test_late_settles_cannot_touch_jobs_another_worker_took_over(url: str) -> None:
    async def main() -> None:
        late, current = open_queue(url), open_queue(url)
        try:
            await late.enqueue(_messages(late, range(200)))
            stale = await late.claim(200, 0.2)
            await asyncio.sleep(0.3)
            fresh = await current.claim(200, 30.0)
            assert sorted(job.id for job in fresh) == list(range(200))
            assert await late.ack(stale) == 0
            assert await late.retry(stale, [0.0] * 200) == 0
            assert await late.release(stale) == 0
            assert await late.dead_letter([(job, "late") for job in stale]) == 0
            assert await late.extend(stale) == 0
            stats = await current.stats()
            assert (stats.in_flight, stats.pending, stats.done, stats.dead) == (200, 0, 0, 0)
            assert await current.ack(fresh) == 200
            assert (await current.stats()).done == 200
        finally:
            await late.close()
            await current.close()

    asyncio.run(main())


def test_a_late_ack_racing_a_takeover_settles_each_job_exactly_once(url: str) -> None:
    # The late ack and the takeover sent at the same moment, many times: whichever Redis
    # runs first wins; the job is never both acknowledged and held, nor lost.
    async def main() -> None:
        late, current = open_queue(url), open_queue(url)
        outcomes: collections.Counter[str] = collections.Counter()
        try:
            for i in range(40):
                await late.enqueue(_messages(late, range(i, i + 1)))
                (stale,) = await late.claim(1, 0.05)
                await asyncio.sleep(0.05 + (i % 6) * 0.001)
                # Sent on two connections at once; which reaches Redis first alternates.
                if i % 2:
                    acked, taken = await asyncio.gather(late.ack([stale]), current.claim(1, 30.0))
                else:
                    taken, acked = await asyncio.gather(current.claim(1, 30.0), late.ack([stale]))
                if acked:
                    assert taken == []
                    outcomes["late ack won"] += 1
                else:
                    assert [job.id for job in taken] == [i]
                    assert await current.ack(taken) == 1
                    outcomes["takeover won"] += 1
            stats = await current.stats()
            assert (stats.done, stats.pending, stats.in_flight) == (40, 0, 0)
        finally:
            await late.close()
            await current.close()
        print(f"\nrace outcomes over 40 rounds: {dict(outcomes)}")

    asyncio.run(main())


# -- blocking claims and round trips --------------------------------------------------------------


def test_an_idle_claim_blocks_on_the_server_and_wakes_when_a_job_arrives(url: str) -> None:
    async def main() -> None:
        consumer, producer = open_queue(url), open_queue(url)
        try:
            await consumer.stats()
            started = time.monotonic()
            claiming = asyncio.ensure_future(consumer.claim(5, 30.0, wait=10.0))
            await asyncio.sleep(0.3)
            async for client in _raw():
                mine = [c for c in await client.client_list() if c["name"] == consumer.consumer]
                assert any(c["cmd"] == "xread" and "b" in c["flags"] for c in mine)  # blocked in Redis
            added = time.monotonic()
            await producer.enqueue(_messages(producer, range(1)))
            jobs = await claiming
            woke_after = time.monotonic() - added
            assert [job.id for job in jobs] == [0] and time.monotonic() - started < 5
            assert woke_after < 0.25, f"woke {woke_after:.3f} s after the job arrived"
        finally:
            await consumer.close()
            await producer.close()

    asyncio.run(main())


async def _monitor(server: str, seen: list[dict[str, Any]], ready: asyncio.Event) -> None:
    client = redis.asyncio.Redis.from_url(server)
    try:
        async with client.monitor() as monitor:
            ready.set()
            async for command in monitor.listen():
                seen.append(command)
    finally:
        await client.aclose()


def _scripts_by_sha() -> dict[str, str]:
    from microbatching.queues._redis_scripts import SCRIPTS

    return {hashlib.sha1(text.encode()).hexdigest(): name for name, text in SCRIPTS.items()}


def test_round_trips_per_batch_as_the_server_counts_them(private: PrivateRedis) -> None:
    """MONITOR on a private server lists every command a client sends (a script's own are
    marked ``lua``): enqueue, claim and acknowledgement are one command per batch each."""
    queue_url = f"{private.url}?name=counted"
    jobs, batch = 2000, 100

    calls = 0

    async def main() -> collections.Counter[str]:
        seen: list[dict[str, Any]] = []
        ready = asyncio.Event()
        watcher = asyncio.ensure_future(_monitor(private.url, seen, ready))
        await ready.wait()
        producer = open_queue(queue_url)
        await producer.enqueue(_messages(producer, range(jobs)))
        await producer.close()
        done = asyncio.Event()
        processed = 0

        async def process(batch_jobs: list[Job[Any]]) -> list[Any]:
            nonlocal processed, calls
            calls += 1
            processed += len(batch_jobs)
            if processed >= jobs:
                done.set()
            return [None] * len(batch_jobs)

        async with AsyncMicroBatching(open_queue(queue_url), process, batch_size=batch, batch_interval=0.005):
            await asyncio.wait_for(done.wait(), 30)
        await asyncio.sleep(0.2)
        watcher.cancel()
        scripts = _scripts_by_sha()
        counts: collections.Counter[str] = collections.Counter()
        for command in seen:
            if command["client_type"] == "lua":
                continue
            words = command["command"].split(" ")
            name = words[0].lower()
            counts[f"script {scripts.get(words[1], '?')}" if name == "evalsha" else name] += 1
        return counts

    counts = asyncio.run(main())
    # A claim can come back short while the producer's jobs are still landing, so count
    # the batches the processor actually saw (about jobs / batch) rather than assume it.
    assert calls <= jobs // batch + 3, calls
    print(f"\nclient commands for {jobs} jobs in {calls} batches: {dict(counts)}")
    assert counts["script enqueue"] == 2  # 1,000 jobs per script, both in one MULTI/EXEC
    hot = ("script claim", "script ack", "script extend", "xread")
    # A claim and an ack per batch; +3 for the idle claims at the start and end; +2 because
    # redis-py 8 sends one EVALSHA each of claim and ack a second time (the queue's own
    # calls were counted at 20 acks for 20 batches while MONITOR listed 21; redis-py 5: 18).
    assert sum(counts[name] for name in hot) <= 2 * calls + 3 + 2, counts
    per_job = {"xadd", "xack", "xreadgroup", "xclaim", "xdel", "zadd", "zrem", "hset"}
    assert not per_job & set(counts), counts
    # The rest is per connection and per handle: CLIENT SETNAME, loading the scripts, setup.
    assert sum(counts.values()) - sum(counts[name] for name in hot) <= 25, counts


# -- connections: dropped, restarted, authenticated -----------------------------------------------


def test_dropped_connections_mid_run_lose_nothing_and_ack_nothing_twice(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = 5000
    caplog.set_level(logging.WARNING, logger="microbatching")

    async def main() -> tuple[int, int, Any]:
        producer = open_queue(url)
        await producer.enqueue(_messages(producer, range(jobs)))
        await producer.close()
        seen: collections.Counter[int] = collections.Counter()

        async def process(batch: list[Job[Any]]) -> list[Any]:
            seen.update(job.id for job in batch)
            await asyncio.sleep(0.03)  # 100 batches: about 3 s, so the kills every 0.1 s land mid-run
            return [None] * len(batch)

        queue: Any = open_queue(url, lease=1.0)
        kills, give_up = 0, time.monotonic() + 40  # a job gone missing fails below, not by a timeout
        async with AsyncMicroBatching(queue, process, batch_size=50, batch_interval=0.005):
            async for admin in _raw():
                while len(seen) < jobs and time.monotonic() < give_up:
                    await asyncio.sleep(0.1)
                    for client in await admin.client_list():
                        if client["name"] == queue.consumer:
                            await admin.client_kill_filter(_id=client["id"])
                            kills += 1
                while True:  # what a kill left claimed comes back after its lease
                    stats = await producer_stats(url)
                    if stats.pending + stats.in_flight == 0 or time.monotonic() > give_up:
                        break
                    await asyncio.sleep(0.1)
        return kills, sum(seen.values()) - len(seen), await producer_stats(url)

    kills, duplicates, stats = asyncio.run(main())
    lost_lines = [r for r in caplog.records if "lost the connection" in r.getMessage()]
    print(f"\n{jobs} jobs, {kills} connections killed: done {stats.done}, duplicates {duplicates}, "
          f"{len(lost_lines)} 'lost the connection' log lines")  # fmt: skip
    assert kills >= 10
    assert stats.done == jobs  # every job acknowledged, none twice
    assert (stats.pending, stats.in_flight, stats.dead) == (0, 0, 0)
    assert 1 <= len(lost_lines) <= kills  # once per outage, never per job


def _reply_lost_once(queue: Any, before_the_repeat: Callable[[], Awaitable[None]] | None = None) -> list[Any]:
    """The first claim that takes jobs runs on the server, then its reply is lost (a connection
    error); returns the list that gets that reply, so a test can check the claim reached the server."""
    run, lost = queue._run, []

    async def claim_reply_lost(script: str, args: Any) -> Any:
        result = await run(script, args)
        if script == "claim" and result[0] and not lost:
            lost.append(result)
            if before_the_repeat is not None:
                await before_the_repeat()
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return result

    queue._run = claim_reply_lost
    return lost


def test_a_claim_whose_reply_was_lost_gets_the_same_jobs_when_it_is_repeated(url: str) -> None:
    # The server ran the claim and the connection dropped before its reply came back: the
    # repeated claim must hand over those jobs (not lease them to nobody until the lease
    # runs out, spending an attempt, which with one attempt buries a job no one ran).
    async def main() -> None:
        queue: Any = open_queue(url, lease=30.0)
        try:
            await queue.enqueue(_messages(queue, range(10)))
            replies_lost = _reply_lost_once(queue)
            jobs = await queue.claim(4, max_attempts=1)
            assert replies_lost, "the claim never reached the server"
            assert [job.id for job in jobs] == [0, 1, 2, 3]
            assert [job.attempts for job in jobs] == [1, 1, 1, 1]  # one delivery each, not two
            assert await queue.ack(jobs) == 4  # the leases handed over are the ones the server holds
            again = await queue.claim(10, max_attempts=1)
            assert [job.id for job in again] == list(range(4, 10))  # a new claim claims anew
            await queue.ack(again)
            stats = await queue.stats()
            assert (stats.done, stats.pending, stats.in_flight, stats.dead) == (10, 0, 0, 0)
        finally:
            await queue.close()
        async for client in _raw():  # a closed handle's record of its last claim goes with it
            assert await client.hlen(queue.keys[KEYS.index("claims")]) == 0

    asyncio.run(main())


def test_a_storm_of_dropped_connections_strands_no_claimed_job(tmp_path: Path) -> None:
    # 100 of the worker's connections are killed, each kill once it has got some work done
    # since the last (so a kill lands on a connection at work, not on one reconnecting): some
    # claims run on the server and their reply never reaches the client.  The lease is long,
    # so a job left leased to no one would still be held at the deadline.
    server = PrivateRedis(tmp_path / "redis", "--appendonly", "no").start()
    jobs, url = 20_000, f"{server.url}?name=storm"

    async def main() -> tuple[int, int, int, Any]:
        producer = open_queue(url)
        await producer.enqueue(_messages(producer, range(jobs)))
        await producer.close()
        seen: collections.Counter[int] = collections.Counter()
        progress = asyncio.Event()

        async def process(batch: list[Job[Any]]) -> list[Any]:
            seen.update(job.id for job in batch)
            progress.set()
            return [None] * len(batch)

        kills, kill_all = 0, ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        async for admin in _raw(server.url):
            async with AsyncMicroBatching(open_queue(url, lease=60.0), process, batch_size=50):
                while kills < 100 and len(seen) < jobs:
                    await asyncio.wait_for(progress.wait(), 10)
                    progress.clear()
                    await asyncio.sleep(random.random() * 0.003)
                    kills += await admin.execute_command(*kill_all)
                with contextlib.suppress(asyncio.TimeoutError):  # until every job ran, or 15 s
                    while len(seen) < jobs:
                        await asyncio.wait_for(progress.wait(), 15)
                        progress.clear()
        return kills, len(seen), sum(seen.values()) - len(seen), await producer_stats(url)

    try:
        kills, ran, duplicates, stats = asyncio.run(main())
    finally:
        server.stop()
    print(f"\n{jobs} jobs, {kills} connections killed: ran {ran}, duplicates {duplicates}, "
          f"done {stats.done}, in flight {stats.in_flight}, dead {stats.dead}")  # fmt: skip
    assert kills >= 50
    assert (ran, duplicates) == (jobs, 0)
    assert (stats.done, stats.pending, stats.in_flight, stats.dead) == (jobs, 0, 0, 0)


def test_a_repeated_claim_leaves_out_the_jobs_taken_over_since_its_reply_was_lost(url: str) -> None:
    async def main() -> None:
        queue: Any = open_queue(url, lease=30.0)
        other: Any = open_queue(url, lease=30.0)
        try:
            await queue.enqueue(_messages(queue, range(10)))
            held = await queue.claim(1)  # job 0, so this consumer stays in the group throughout
            taken_over: list[Any] = []

            async def two_taken_over() -> None:
                await asyncio.sleep(0.3)  # the 0.2 s leases run out; another worker takes two
                taken_over.extend(await other.claim(2, max_attempts=3))

            _reply_lost_once(queue, two_taken_over)
            jobs = await queue.claim(4, 0.2, max_attempts=3)  # jobs 1-4, the reply lost
            assert [job.id for job in taken_over] == [1, 2]
            assert [job.attempts for job in taken_over] == [2, 2]  # their lease ran out once
            assert [job.id for job in jobs] == [3, 4]  # the rest of the lost claim, none held twice
            assert [job.attempts for job in jobs] == [1, 1]
            assert await queue.ack(held + jobs) == 3
            assert await other.ack(taken_over) == 2
        finally:
            await queue.close()
            await other.close()

    asyncio.run(main())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_handle_copied_into_a_forked_child_does_not_repeat_the_parents_claims(url: str) -> None:
    # Made before the fork and first used after it (a module-level handle in a pre-forking
    # server): parent and child are the same consumer, and the child's first claim must not
    # pass for a repeat of the parent's.
    queue: Any = open_queue(url, lease=30.0)

    async def claim(n: int) -> list[int]:
        return [job.id for job in await queue.claim(n)]

    async def setup() -> None:
        producer = open_queue(url)
        try:
            await producer.enqueue(_messages(producer, range(10)))
        finally:
            await producer.close()

    asyncio.run(setup())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: claim, report, leave at once (no clean-up of the parent's)
        try:
            os.write(write, json.dumps(asyncio.run(claim(5))).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = json.loads(os.read(read, 10_000))
    os.close(read)

    async def parent() -> list[int]:
        try:
            return await claim(5)
        finally:
            await queue.close()

    assert sorted(child + asyncio.run(parent())) == list(range(10))


async def producer_stats(queue_url: str) -> Any:
    queue = open_queue(queue_url)
    try:
        return await queue.stats()
    finally:
        await queue.close()


def test_credentials_never_appear_in_repr_errors_logs_or_stats(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Passw0rd"
    server = PrivateRedis(tmp_path / "auth", "--requirepass", secret).start()
    caplog.set_level(logging.WARNING, logger="microbatching")
    try:
        good = f"redis://:{secret}@127.0.0.1:{server.port}/0?name=authq"
        in_query = f"redis://127.0.0.1:{server.port}/0?name=authq&password={secret}"
        wrong = f"redis://:wrong-{secret}@127.0.0.1:{server.port}/0?name=authq"

        async def main() -> list[str]:
            texts = []
            for queue_url in (good, in_query):
                queue: Any = open_queue(queue_url)
                texts.append(repr(queue))
                await queue.enqueue(_messages(queue, range(3)))
                texts.append(str(await queue.stats()))
                async for admin in _raw(f"redis://:{secret}@127.0.0.1:{server.port}/0"):
                    for client in await admin.client_list():
                        if client["name"] == queue.consumer:
                            await admin.client_kill_filter(_id=client["id"])
                await queue.stats()  # reconnects (and logs it)
                await queue.close()
            bad = open_queue(wrong)
            with pytest.raises(QueueError) as refused:
                await bad.stats()
            texts.append(str(refused.value))
            await bad.close()
            return texts

        texts = asyncio.run(main())
        cli = subprocess.run(
            [sys.executable, "-m", "microbatching", "stats", "--queue", good],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        texts += [cli.stdout, cli.stderr]
        texts += [record.getMessage() for record in caplog.records]
        assert cli.returncode == 0 and "pending    6" in cli.stdout  # 3 through each URL
        assert any("***" in text for text in texts)
        assert [text for text in texts if secret in text] == []
    finally:
        server.stop()


def test_a_rediss_url_speaks_tls(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "tls", "--appendonly", "no", tls=True).start()
    try:
        cert = server.directory / "cert.pem"

        async def main() -> list[Any]:
            queue = open_queue(f"{server.url}?name=tlsq&ssl_ca_certs={cert}")
            try:
                await queue.enqueue(_messages(queue, range(3)))
                jobs = await queue.claim(3, 30.0)
                assert await queue.ack(jobs) == 3
                return jobs
            finally:
                await queue.close()

        assert sorted(job.id for job in asyncio.run(main())) == [0, 1, 2]
    finally:
        server.stop()


def test_operations_fail_with_a_queue_error_once_reconnecting_runs_out(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "gone", "--appendonly", "no").start()
    queue_url = f"{server.url}?name=gone&reconnect_timeout=0.5"

    async def main() -> None:
        queue = open_queue(queue_url)
        try:
            await queue.stats()
            server.stop()
            started = time.monotonic()
            with pytest.raises(QueueError, match="ConnectionError"):
                await queue.stats()
            assert 0.4 <= time.monotonic() - started < 5
        finally:
            await queue.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


@pytest.mark.timeout(150)
def test_a_redis_restart_mid_run_loses_no_acknowledged_job(tmp_path: Path) -> None:
    """Workers (the real CLI) on a private redis-server with ``appendonly yes`` and
    ``appendfsync always``, SIGKILLed and restarted twice mid-run while a producer adds more:
    every job whose enqueue Redis acknowledged is processed, each acknowledged once."""
    from fault.fault_harness import FaultRun, finish

    server = PrivateRedis(tmp_path / "aof").start()
    run = FaultRun(
        tmp_path, "test_a_redis_restart_mid_run_loses_no_acknowledged_job", f"{server.url}?name=restart"
    )
    first, later = 6000, 3000
    try:
        run.enqueue(range(first))
        options = ("--batch-size", "50", "--batch-interval", "0.01", "--lease", "2", "--max-attempts", "50")
        workers = [run.worker(*options, "--until-empty", FAULT_SLEEP="0.01") for _ in range(2)]
        stored: list[int] = []
        producing = threading.Thread(target=_produce, args=(run.url, range(first, first + later), stored))
        producing.start()
        restarts = 0
        for threshold in (1500, 4000):
            while len(run.counts()) < threshold and all(w.poll() is None for w in workers):
                time.sleep(0.01)
            server.kill()
            time.sleep(0.5)
            server.start()
            restarts += 1
        producing.join(60)
        codes = [finish(worker, 120) for worker in workers]
        if set(stored) - set(run.counts()):  # jobs stored after the workers found the queue empty
            assert finish(run.worker(*options, "--until-empty"), 60) == 0
        counts = run.counts()
        stats, dead = run.stats()
        expected = set(range(first)) | set(stored)
        lost = len(expected - set(counts))
        duplicates = sum(counts.values()) - len(counts)
        run.report(jobs=len(expected), restarts=restarts, workers=2, lost=lost, duplicates=duplicates,
                   done=stats.done, left_pending=stats.pending, left_leased=stats.in_flight, dead=stats.dead,
                   persistence="appendonly yes, appendfsync always")  # fmt: skip
        assert codes == [0, 0]
        assert len(stored) == later
        assert lost == 0
        assert stats.done == len(expected)  # each acknowledged once, and none forgotten
        assert (stats.pending, stats.delayed, stats.in_flight) == (0, 0, 0) and dead == []
    finally:
        try:
            run.drop()
        finally:
            server.stop()


def _produce(queue_url: str, ids: range, stored: list[int]) -> None:
    """Enqueue ``ids`` 100 at a time while Redis restarts; each chunk retried until stored."""

    async def main() -> None:
        queue = open_queue(queue_url)
        try:
            for start in range(ids.start, ids.stop, 100):
                chunk = range(start, min(start + 100, ids.stop))
                while True:
                    try:
                        await queue.enqueue(_messages(queue, chunk))
                        break
                    except MicroBatchingError:
                        await asyncio.sleep(0.1)
                stored.extend(chunk)
                await asyncio.sleep(0.02)
        finally:
            await queue.close()

    asyncio.run(main())


@pytest.mark.timeout(300)
def test_the_quick_redis_benchmark_runs_and_checks_every_result(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    proc = subprocess.run(
        [sys.executable, str(benchmarks / "run.py"), "--quick", "--only", "redis", "--json", str(out)],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert {"microbatching", "raw redis-py"} <= set(results["redis"]["impls"])
    assert set(results["redis/1"]["impls"]) == {"1 worker", "2 workers", "4 workers"}
