"""Profile one of our hot paths with cProfile and print where the time goes.

``python benchmarks/profile_hot.py fan-in|bulk|decorator|sync [--jobs N] [--top K]``

cProfile inflates the cost of small Python functions (it is a deterministic profiler),
so read the ranking, not the absolute times; for a sampling view of the same workload
run ``py-spy record -o out.svg -- python benchmarks/profile_hot.py bulk --no-profile``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
from collections.abc import Callable
from typing import Any

import workloads as w

BATCH_SIZE = 100
INTERVAL = 0.005


def _target(name: str, jobs: int) -> Callable[[], Any]:
    if name == "fan-in":
        return lambda: asyncio.run(w.fan_in_ours(jobs, 1_000, BATCH_SIZE, INTERVAL))
    if name == "decorator":
        return lambda: asyncio.run(w.fan_in_decorator(jobs, 1_000, BATCH_SIZE, INTERVAL))
    if name == "bulk":
        return lambda: asyncio.run(w.bulk_ours(jobs, BATCH_SIZE, INTERVAL))
    if name == "sync":
        return lambda: w.sync_ours(jobs, 8, BATCH_SIZE, INTERVAL, False)
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["fan-in", "bulk", "decorator", "sync"])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true", help="just run it (for py-spy)")
    args = parser.parse_args(argv)
    run = _target(args.workload, args.jobs)
    run()  # warm up
    if args.no_profile:
        print(run())
        return 0
    profiler = cProfile.Profile()
    profiler.enable()
    metrics = run()
    profiler.disable()
    print(metrics)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
