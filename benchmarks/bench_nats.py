"""NATS JetStream: the library end to end, against a raw nats-py loop and taskiq on NATS.

Every side stores the same jobs (JSON, one message each) in a work-queue stream with file
storage and consumes them through a durable pull consumer with explicit acknowledgements,
in one process, producing and consuming at once:

- ``microbatching``: ``AsyncMicroBatching`` on ``NatsQueue`` (``queue_bench.ours_end_to_end``);
- ``raw nats-py``: the same operations by hand: every job published with a message id and
  its PubAck awaited in bulk (``publish_async``), pull fetches of 100, the trivial work,
  an ``+ACK`` per job and one flush per batch;
- ``taskiq-nats``: taskiq's ``PullBasedJetStreamBroker`` (fetches of 100), ``kiq()`` for every
  job (gathered 1,000 at a time), its receiver running the same trivial task in-process.

Then 1, 2 and 4 worker processes (the real CLI) drain one queue (``worker_scaling``).
Needs the NATS server at 127.0.0.1:4222 with JetStream; skipped with a message otherwise.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
import uuid

from harness import Comparison, Metrics, run_alternating
from queue_bench import BATCH_SIZE, ours_end_to_end, reachable, worker_scaling

__all__ = ["bench"]

SERVER = "nats://127.0.0.1:4222"


def bench(quick: bool, repeats: int) -> list[Comparison]:
    """The end-to-end comparison and the worker scaling, or nothing when NATS is not reachable."""
    if not reachable(SERVER, 4222):
        print(f"   nats: no NATS server at {SERVER}: skipped")
        return []
    n = 500 if quick else 20_000
    impls = {
        "microbatching": lambda: ours_end_to_end(_url("ours"), n),
        "raw nats-py": lambda: asyncio.run(_raw(n)),
    }
    notes = [
        "raw nats-py: publish_async with a message id per job (PubAcks awaited together), pull fetch "
        f"of {BATCH_SIZE}, the work, msg.ack() per job and one flush per batch; same stream and consumer",
    ]
    if importlib.util.find_spec("taskiq_nats") is not None:
        impls["taskiq-nats"] = lambda: asyncio.run(_taskiq(n))
        notes.append(
            "taskiq-nats: PullBasedJetStreamBroker (work-queue stream, file storage, fetches of "
            f"{BATCH_SIZE}), kiq() per job gathered 1,000 at a time, its receiver in the same process"
        )
    else:
        notes.append("taskiq-nats is not installed (pip install -e '.[bench]'): not measured")
    result = run_alternating(
        f"nats: {n:,} jobs enqueued and processed, one process", impls, repeats, "raw nats-py"
    )
    result.notes.extend(notes)
    scaling_jobs = 2_000 if quick else 40_000
    return [result, worker_scaling("nats", _url, scaling_jobs)]


def _url(label: str) -> str:
    return f"{SERVER}?stream=mb_bench_{label}_{uuid.uuid4().hex[:8]}"


async def _raw(n: int) -> Metrics:
    """The library's broker operations by hand (see the module docstring)."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

    name = f"mb_bench_raw_{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(SERVER)
    js = nc.jetstream()
    stream = StreamConfig(name=name, subjects=[f"{name}.ready"], retention=RetentionPolicy.WORK_QUEUE,
                          storage=StorageType.FILE)  # fmt: skip
    await js.add_stream(stream)
    await js.add_consumer(name, ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT,
                                               ack_wait=30, max_deliver=-1, max_ack_pending=-1))  # fmt: skip
    pull = await js.pull_subscribe_bind("workers", stream=name)
    try:
        start = time.perf_counter()

        async def produce() -> None:
            for first in range(0, n, 1000):
                for x in range(first, min(first + 1000, n)):
                    body = json.dumps({"id": x, "data": x}).encode()
                    await js.publish_async(f"{name}.ready", body, headers={"Nats-Msg-Id": f"raw-{x}"})
                await js.publish_async_completed()

        async def consume() -> int:
            done = ok = 0
            while done < n:
                try:
                    msgs = await pull.fetch(BATCH_SIZE, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    job = json.loads(msg.data)
                    ok += job["data"] * 2 == job["id"] * 2
                    await msg.ack()
                await nc.flush()
                done += len(msgs)
            return ok

        _, ok = await asyncio.gather(produce(), consume())
        elapsed = time.perf_counter() - start
        if ok != n:
            raise AssertionError(f"raw nats-py: {ok} of {n} results were correct")
        return {"jobs_per_s": n / elapsed}
    finally:
        await js.delete_stream(name)
        await nc.close()


async def _taskiq(n: int) -> Metrics:
    """taskiq's JetStream pull broker with its receiver in-process, the same trivial work."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from taskiq.api import run_receiver_task
    from taskiq_nats import PullBasedJetStreamBroker

    name = f"mb_bench_taskiq_{uuid.uuid4().hex[:8]}"
    config = StreamConfig(name=name, subjects=[f"{name}.tasks"], retention=RetentionPolicy.WORK_QUEUE,
                          storage=StorageType.FILE)  # fmt: skip
    broker = PullBasedJetStreamBroker(SERVER, subject=f"{name}.tasks", stream_name=name, durable="workers",
                                      stream_config=config, pull_consume_batch=BATCH_SIZE,
                                      pull_consume_timeout=1.0)  # fmt: skip
    finished = asyncio.Event()
    results: list[int] = []

    @broker.task
    async def double(x: int) -> int:
        results.append(x * 2)
        if len(results) >= n:
            finished.set()
        return x * 2

    await broker.startup()
    receiver = asyncio.create_task(run_receiver_task(broker, max_prefetch=BATCH_SIZE))
    try:
        start = time.perf_counter()
        for first in range(0, n, 1000):
            await asyncio.gather(*(double.kiq(x) for x in range(first, min(first + 1000, n))))
        await asyncio.wait_for(finished.wait(), 600)
        elapsed = time.perf_counter() - start
        if sorted(results) != [x * 2 for x in range(n)]:
            raise AssertionError(f"taskiq-nats: {len(results)} results, not the {n} expected")
        return {"jobs_per_s": n / elapsed}
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        await broker.js.delete_stream(name)
        await broker.shutdown()
