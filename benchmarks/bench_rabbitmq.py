"""RabbitMQ: the library end to end, against a raw aio-pika loop and Celery with celery-batches.

Every side stores the same jobs (JSON, one persistent message each) in a durable queue on
the broker at 127.0.0.1:5672 and consumes them with manual acknowledgements, producing and
consuming at once:

- ``microbatching``: ``AsyncMicroBatching`` on ``RabbitMQQueue`` (``queue_bench.ours_end_to_end``),
  a quorum queue;
- ``raw aio-pika``: the same operations by hand on a quorum queue: publishes with publisher
  confirms awaited together (1,000 at a time), a consumer with a prefetch of two batches,
  the trivial work per batch of 100, one ``multiple`` acknowledgement per batch written
  without waiting and one ``basic.qos`` round trip per batch;
- ``celery-batches``: Celery with a ``Batches`` task (``flush_every=100``) on the same broker,
  ``apply_async`` per job from this process, one worker process (``-P solo``) running the same
  trivial work; timed until the worker has processed every job.

Then 1, 2 and 4 worker processes (the real CLI) drain one queue (``worker_scaling``).
Skipped with a message when RabbitMQ is not reachable.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import Comparison, Metrics, run_alternating
from queue_bench import BATCH_SIZE, ours_end_to_end, reachable, worker_scaling

__all__ = ["bench"]

SERVER = "amqp://guest:guest@127.0.0.1:5672/"
HERE = Path(__file__).parent


def bench(quick: bool, repeats: int) -> list[Comparison]:
    """The end-to-end comparison and the worker scaling, or nothing when RabbitMQ is not reachable."""
    if not reachable(SERVER, 5672):
        print(f"   rabbitmq: no RabbitMQ at {SERVER.rpartition('@')[2]}: skipped")
        return []
    n = 500 if quick else 20_000
    impls = {
        "microbatching": lambda: ours_end_to_end(_url("ours"), n),
        "raw aio-pika": lambda: asyncio.run(_raw(n)),
    }
    notes = [
        "raw aio-pika: quorum queue, publisher confirms gathered 1,000 at a time, prefetch "
        f"{2 * BATCH_SIZE}, batches of {BATCH_SIZE}, one multiple basic.ack per batch without waiting, "
        "one basic.qos round trip per batch; the same queue type and message size",
    ]
    if importlib.util.find_spec("celery_batches") is not None:
        impls["celery-batches"] = lambda: _celery(n)
        notes.append(
            f"celery-batches: a Batches task (flush_every={BATCH_SIZE}, flush_interval=0.005) on a quorum "
            "queue, apply_async per job, one worker process (-P solo, prefetch multiplier 0)"
        )
    else:
        notes.append("celery-batches is not installed (pip install -e '.[bench]'): not measured")
    result = run_alternating(
        f"rabbitmq: {n:,} jobs enqueued and processed, one process", impls, repeats, "raw aio-pika"
    )
    result.notes.extend(notes)
    scaling_jobs = 2_000 if quick else 40_000
    return [result, worker_scaling("rabbitmq", _url, scaling_jobs)]


def _url(label: str) -> str:
    return f"{SERVER}?name=mb_bench_{label}_{uuid.uuid4().hex[:8]}"


async def _raw(n: int) -> Metrics:
    """The library's broker operations by hand (see the module docstring)."""
    import aio_pika
    import aiormq

    name = f"mb_bench_raw_{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(SERVER)
    publishing = await (await connection.channel(publisher_confirms=True)).get_underlay_channel()
    consuming = await (await connection.channel(publisher_confirms=False)).get_underlay_channel()
    await publishing.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        start = time.perf_counter()

        async def produce() -> None:
            properties = aiormq.spec.Basic.Properties(delivery_mode=2)
            for first in range(0, n, 1000):
                await asyncio.gather(*(
                    publishing.basic_publish(json.dumps({"id": x, "data": x}).encode(), routing_key=name,
                                             properties=properties, mandatory=True)
                    for x in range(first, min(first + 1000, n))
                ))  # fmt: skip

        arrived: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()

        async def deliver(message: aiormq.abc.DeliveredMessage) -> None:
            arrived.put_nowait(message)

        async def consume() -> int:
            await consuming.basic_qos(prefetch_count=2 * BATCH_SIZE)
            consumer = await consuming.basic_consume(name, deliver, no_ack=False)
            done = ok = 0
            while done < n:
                batch = [await arrived.get()]
                while len(batch) < BATCH_SIZE and not arrived.empty():
                    batch.append(arrived.get_nowait())
                for message in batch:
                    job = json.loads(message.body)
                    ok += job["data"] * 2 == job["id"] * 2
                # Batches settle in delivery order: one frame acknowledges the whole batch.
                await consuming.basic_ack(batch[-1].delivery_tag or 0, multiple=True, wait=False)
                await consuming.basic_qos(prefetch_count=2 * BATCH_SIZE)  # the acks were read
                done += len(batch)
            await consuming.basic_cancel(consumer.consumer_tag or "")
            return ok

        _, ok = await asyncio.gather(produce(), consume())
        elapsed = time.perf_counter() - start
        if ok != n:
            raise AssertionError(f"raw aio-pika: {ok} of {n} results were correct")
        return {"jobs_per_s": n / elapsed}
    finally:
        await publishing.queue_delete(name)
        await connection.close()


_CELERY_APP = """
import os
from celery import Celery
from celery_batches import Batches

app = Celery("mb_bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(task_default_queue=os.environ["BENCH_QUEUE"], task_default_queue_type="quorum",
                worker_prefetch_multiplier=0, task_acks_late=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


@app.task(base=Batches, flush_every={batch}, flush_interval=0.005)
def double(requests):
    results = [request.args[0] * 2 for request in requests]
    with open(os.environ["BENCH_DONE"], "a") as out:
        out.write(f"{{len(results)}} {{sum(results)}}\\n")
"""


def _celery(n: int) -> Metrics:
    """Celery with celery-batches: jobs sent from here, one worker process running the batches."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "mb_bench_celery.py").write_text(_CELERY_APP.format(batch=BATCH_SIZE))
        queue = f"mb_bench_celery_{uuid.uuid4().hex[:8]}"
        done = Path(tmp, "done.log")
        done.touch()
        env = {**os.environ, "BENCH_BROKER": SERVER, "BENCH_QUEUE": queue, "BENCH_DONE": str(done),
               "PYTHONPATH": tmp}  # fmt: skip
        sys.path.insert(0, tmp)
        os.environ.update({"BENCH_BROKER": SERVER, "BENCH_QUEUE": queue, "BENCH_DONE": str(done)})
        try:
            import mb_bench_celery

            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "mb_bench_celery", "worker", "-P", "solo",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
                env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                return _time_celery(mb_bench_celery, done, n)
            finally:
                worker.terminate()
                worker.wait(30)
                _delete_queue(queue)
        finally:
            sys.path.remove(tmp)
            sys.modules.pop("mb_bench_celery", None)


def _time_celery(module: object, done: Path, n: int) -> Metrics:
    task = module.double  # type: ignore[attr-defined]
    app = module.app  # type: ignore[attr-defined]
    with app.connection_for_write() as connection:  # the queue exists before the clock starts
        task.apply_async((0,), connection=connection)
        _wait_for(done, 1, 60)
    done.write_text("")
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for x in range(n):
            task.apply_async((x,), producer=producer)
    _wait_for(done, n, 600)
    elapsed = time.perf_counter() - start
    total = sum(int(line.split()[1]) for line in done.read_text().splitlines())
    if total != sum(x * 2 for x in range(n)):
        raise AssertionError("celery-batches: the results are not those of the jobs sent")
    return {"jobs_per_s": n / elapsed}


def _wait_for(done: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(int(line.split()[0]) for line in done.read_text().splitlines()) >= count:
            return
        time.sleep(0.005)
    raise AssertionError(f"celery-batches: fewer than {count} jobs processed within {timeout} s")


def _delete_queue(queue: str) -> None:
    """Delete the benchmark's queue and what Celery declared beside it.

    Celery (5.5+) on quorum queues sets up its native delayed delivery: the queues and
    exchanges ``celery_delayed_0`` .. ``celery_delayed_27`` and ``celery_delayed_delivery``;
    its worker declares the ``celery.pidbox`` exchange.
    """

    async def main() -> None:
        import aio_pika

        connection = await aio_pika.connect(SERVER)
        try:
            channel = await connection.channel()
            await channel.queue_delete(queue)
            await channel.exchange_delete(queue)
            for level in range(28):
                await channel.queue_delete(f"celery_delayed_{level}")
                await channel.exchange_delete(f"celery_delayed_{level}")
            await channel.exchange_delete("celery_delayed_delivery")
            await channel.exchange_delete("celery.pidbox")
        finally:
            await connection.close()

    asyncio.run(main())
