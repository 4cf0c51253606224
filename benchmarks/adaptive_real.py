"""One run on the real clock: a numpy model whose batched call is cheaper per item, fixed vs adaptive.

The processor is a sync function (it runs on the library's processor thread): 48 small
dense layers (64 units, tanh) on a float32 matrix of the batch, so a call costs about
0.1 ms whatever its size and each item little more (a small model in an interpreted
framework).  Jobs arrive as a Poisson stream for a few seconds; every job's latency is
submit to result.  BLAS is asked for one thread (this machine's cores are shared).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads its BLAS

import numpy as np

from microbatching import AsyncMicroBatching

__all__ = ["measure_rate", "run_real"]

WIDTH = 64
LAYERS = 48
RATE = 4000.0
_rng = np.random.default_rng(7)
_WEIGHTS = [(_rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32) for _ in range(LAYERS)]


def model(items: list[Any]) -> list[float]:
    """The batched forward pass: one result per item."""
    x = np.stack(items)
    for weights in _WEIGHTS:
        x = np.tanh(x @ weights)
    return [float(v) for v in x[:, 0]]


def measure_rate(size: int, calls: int = 50) -> float:
    """Items per second of ``model`` on batches of ``size`` (called directly, no batcher)."""
    batch = [np.ones(WIDTH, dtype=np.float32)] * size
    start = time.perf_counter()
    for _ in range(calls):
        model(batch)
    return size * calls / (time.perf_counter() - start)


async def _run(options: dict[str, Any], rate: float, seconds: float, seed: int) -> dict[str, float]:
    mb = AsyncMicroBatching(None, model, takes="items", retry=None, **options)
    rng = random.Random(seed)
    item = np.ones(WIDTH, dtype=np.float32)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    futures = []
    start = loop.time()
    due = start
    while due - start < seconds:
        due += rng.expovariate(rate)
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        submitted = loop.time()
        future = mb.submit_nowait(item)
        future.add_done_callback(lambda _, s=submitted: latencies.append(loop.time() - s))
        futures.append(future)
    await asyncio.gather(*futures)
    elapsed = loop.time() - start
    stats = mb.stats()
    await mb.shutdown()
    latencies.sort()
    return {
        "jobs_per_s": len(latencies) / elapsed,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
        "mean_ms": sum(latencies) / len(latencies) * 1e3,
        "calls_per_job": stats.batches / len(latencies),
    }


def run_real(seconds: float = 3.0, rate: float = RATE) -> list[tuple[str, dict[str, float]]]:
    """Fixed (the defaults, and a small fast one) and adaptive, ``rate`` jobs a second."""
    configs: dict[str, dict[str, Any]] = {
        "fixed defaults (100, 50 ms)": {},
        "fixed size 16, 1 ms": {"batch_size": 16, "batch_interval": 0.001},
        "adaptive (target 50 ms)": {"latency_target": 0.05, "batch_size": 1024},
    }
    return [
        (f"real clock, {rate:,.0f} jobs/s: {name}", asyncio.run(_run(options, rate, seconds, 11)))
        for name, options in configs.items()
    ]
