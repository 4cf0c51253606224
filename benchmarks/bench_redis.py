"""RedisQueue end to end, against a raw redis-py loop of the same commands and against arq.

All three run on the Redis at 127.0.0.1:6379 (MICROBATCHING_BENCH_REDIS overrides it), the
same jobs (data 0..n-1), the same trivial work (twice each job's data):

- microbatching: ``AsyncMicroBatching`` on a ``RedisQueue``, jobs submitted and processed by
  that one process (batch_size 100), every result awaited.
- raw redis-py: the queue's own scripts (one copy of them, imported) called by hand: the
  jobs enqueued by the enqueue script 1,000 at a time in one MULTI/EXEC, then per batch of
  100 one claim script (XREADGROUP COUNT, leases recorded), decode, process, one ack
  script (ownership checked, XACK, XDEL).  No engine, no futures, no lease renewal.
- arq: ``enqueue_job`` per job (arq has no bulk enqueue; 50 in flight at a time, its best
  here), then a burst ``Worker`` with arq's defaults (max_jobs=10: more was slower here)
  runs ``double`` on each; results kept as arq keeps them.

Then 1, 2 and 4 worker processes (the CLI) draining one queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

from harness import Comparison, Metrics, run_alternating
from queue_bench import BATCH_SIZE, ours_end_to_end, reachable, worker_scaling

__all__ = ["bench"]

SERVER = os.environ.get("MICROBATCHING_BENCH_REDIS", "redis://127.0.0.1:6379/0")
FULL_JOBS, QUICK_JOBS = 50_000, 500


def bench(quick: bool, repeats: int) -> list[Comparison]:
    """The library against the raw loop and arq, then worker scaling."""
    if not reachable(SERVER, 6379):
        print(f"redis: no server at {SERVER}: skipped")
        return []
    n = QUICK_JOBS if quick else FULL_JOBS
    impls = {
        "microbatching": lambda: ours_end_to_end(_url("ours"), n),
        "raw redis-py": lambda: asyncio.run(_raw(_name("raw"), n)),
    }
    notes = [
        "raw redis-py: RedisQueue's scripts by hand: enqueue 1,000 per script in one MULTI/EXEC; per batch "
        "of 100 one claim script, decode, process, one ack script",
    ]
    if _have_arq():
        impls["arq"] = lambda: asyncio.run(_arq(_name("arq"), n))
        notes.append("arq: enqueue_job per job, 50 in flight; then a burst Worker with arq's defaults")
    else:
        notes.append("arq not installed: skipped (pip install -e '.[bench]')")
    end_to_end = run_alternating(
        f"redis: {n:,} jobs enqueued and processed, one process", impls, repeats, "raw redis-py"
    )
    end_to_end.notes.extend(notes)
    scaling = worker_scaling("redis", _url, n if quick else 100_000)
    return [end_to_end, scaling]


def _have_arq() -> bool:
    import importlib.util

    return importlib.util.find_spec("arq") is not None


def _name(label: str) -> str:
    return f"mb_bench_{label}_{uuid.uuid4().hex[:8]}"


def _url(label: str) -> str:
    return f"{SERVER}?name={_name(label)}"


# -- the raw loop: the queue's scripts, by hand --------------------------------------------------


async def _raw(name: str, n: int) -> Metrics:
    import redis.asyncio

    from microbatching.queues._redis_scripts import GROUP, KEYS, SCRIPTS, VERSION
    from microbatching.queues.redis import _WORKER_LOST

    client = redis.asyncio.Redis.from_url(SERVER)
    scripts = {script: client.register_script(text) for script, text in SCRIPTS.items()}
    keys = [f"microbatching:{{{name}}}:{suffix}" for suffix in KEYS]
    try:
        await scripts["setup"](keys, [GROUP, "json", VERSION, "1"])
        start = time.perf_counter()
        await _raw_enqueue(client, scripts["enqueue"], keys, n)
        ok = await _raw_drain(client, scripts, keys, n, _WORKER_LOST)
        elapsed = time.perf_counter() - start
    finally:
        await client.delete(*keys)
        await client.aclose()
    if ok != n:
        raise AssertionError(f"raw redis-py: {ok} of {n} results were correct")
    return {"jobs_per_s": n / elapsed}


async def _raw_enqueue(client: Any, enqueue: Any, keys: list[str], n: int) -> None:
    prefix = uuid.uuid4().hex[:12]
    async with client.pipeline(transaction=True) as pipe:
        for start in range(0, n, 1000):
            args: list[Any] = []
            for x in range(start, min(start + 1000, n)):
                encoded = json.dumps(x).encode()
                args += [f"{prefix}-{x}", encoded, encoded, 0]
            await enqueue(keys, args, client=pipe)
        await pipe.execute()


async def _raw_drain(client: Any, scripts: dict[str, Any], keys: list[str], n: int, lost: str) -> int:
    from microbatching.queues._redis_scripts import GROUP

    consumer, ok, claims = f"raw-{os.getpid()}", 0, 0
    while ok < n:
        claims += 1  # each claim carries an id, as the queue's do (one consumer here: a count will do)
        args = [GROUP, consumer, BATCH_SIZE, 30_000, 1, lost, "0", claims]
        rows, last_id, _ = await scripts["claim"](keys, args)
        if not rows:
            await client.xread({keys[0]: last_id}, count=1, block=100)
            continue
        acks: list[Any] = [GROUP]
        for entry_id, deliveries, key, job_id, payload, _, _ in rows:
            ok += json.loads(payload) * 2 == json.loads(job_id) * 2
            acks += [entry_id, consumer, deliveries, key]
        await scripts["ack"](keys, acks)
    return ok


# -- arq: the job system users would pick on Redis ------------------------------------------------


async def _double(ctx: dict[str, Any], x: int) -> int:
    return x * 2


async def _arq(name: str, n: int) -> Metrics:
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    pool = await create_pool(RedisSettings.from_dsn(SERVER), default_queue_name=name)
    worker = Worker(
        functions=[func(_double, name="double")], redis_pool=pool, queue_name=name, burst=True,
        handle_signals=False,
    )  # fmt: skip
    in_flight = asyncio.Semaphore(50)

    async def enqueue(x: int) -> None:
        async with in_flight:
            await pool.enqueue_job("double", x, _job_id=f"{name}-{x}")

    try:
        start = time.perf_counter()
        await asyncio.gather(*(enqueue(x) for x in range(n)))
        await worker.main()
        elapsed = time.perf_counter() - start
        done = worker.jobs_complete
        sample = await pool.get(f"arq:result:{name}-{n - 1}")
    finally:
        await worker.close()
        await _delete_matching(pool, [name, f"arq:*:{name}-*"])
        await pool.aclose()
    if done != n or sample is None:
        raise AssertionError(f"arq: {done} of {n} jobs completed")
    return {"jobs_per_s": n / elapsed}


async def _delete_matching(client: Any, patterns: list[str]) -> None:
    for pattern in patterns:
        batch = [key async for key in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(batch), 1000):
            await client.delete(*batch[start : start + 1000])
