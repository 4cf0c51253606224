"""Run the benchmark suite: ``python benchmarks/run.py [--quick] [--only NAME] ...``.

Each workload runs our library, the bare-bones reference batcher (``reference.py``) and,
where it applies, aiodataloader, in turn over several repeats in this one process, and
prints medians and the paired ratio to the baseline.  ``--quick`` runs every workload
tiny (for CI: it checks every result but judges no speed).  It ends with a verdict on
each of the project's speed goals: "meets the goal" or "below the goal".  See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import adaptive
import durable
import workloads as w
from harness import Comparison, Metrics, format_table, run_alternating

import microbatching

WORKLOADS = ["fan-in", "bulk", "decorator", "sync", "timer", "observability", "memory", "durable", "adaptive"]
#: Broker queues, each measured by its own module bench_<name>.py (run only when asked for).
QUEUE_WORKLOADS = ["redis", "postgres", "rabbitmq", "nats"]
BATCH_SIZE = 100
INTERVAL = 0.005


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does."""

    fan_in_jobs: int = 100_000
    fan_in_tasks: int = 1_000
    bulk_jobs: int = 300_000
    sync_jobs: int = 100_000
    sync_threads: int = 8
    timer_seconds: float = 2.0
    memory_counts: tuple[int, ...] = (250_000, 500_000, 1_000_000, 2_000_000)
    max_pending: int = 10_000
    durable_jobs: int = 50_000
    durable_peer_jobs: int = 2_000
    repeats: int = 5


QUICK = Sizes(
    fan_in_jobs=2_000,
    fan_in_tasks=100,
    bulk_jobs=5_000,
    sync_jobs=4_000,
    timer_seconds=0.3,
    memory_counts=(5_000, 10_000),
    max_pending=500,
    durable_jobs=500,
    durable_peer_jobs=50,
    repeats=1,
)


def _run(coro_fn: Callable[..., Any], *args: Any) -> Callable[[], Metrics]:
    """A no-argument runner doing ``asyncio.run(coro_fn(*args))`` (a fresh loop per run)."""
    return lambda: asyncio.run(coro_fn(*args))


def _with_peer(
    impls: dict[str, Callable[[], Metrics]], peer: Callable[[], Metrics], notes: list[str]
) -> None:
    if w.have_aiodataloader():
        impls["aiodataloader"] = peer
    else:
        notes.append("aiodataloader not installed: peer skipped (pip install -e '.[bench]')")


def bench_fan_in(sizes: Sizes, repeats: int) -> Comparison:
    args = (sizes.fan_in_jobs, sizes.fan_in_tasks, BATCH_SIZE, INTERVAL)
    impls = {
        "ours": _run(w.fan_in_items_ours, *args),
        "ours, Job": _run(w.fan_in_ours, *args),
        "reference": _run(w.fan_in_reference, *args),
    }
    notes = [
        "ours: submit_nowait(item), the processor taking items; ours, Job: submit_job_nowait(Job(...))",
        "aiodataloader dispatches on the next loop tick (it has no interval)",
    ]
    _with_peer(impls, _run(w.fan_in_aiodataloader, *args), notes)
    result = run_alternating("fan-in", impls, repeats, "reference")
    result.notes += notes
    return result


def bench_bulk(sizes: Sizes, repeats: int) -> Comparison:
    args = (sizes.bulk_jobs, BATCH_SIZE, INTERVAL)
    impls = {
        "ours": _run(w.bulk_items_ours, *args),
        "ours, Job": _run(w.bulk_ours, *args),
        "ours, submit_many": _run(w.bulk_many_ours, *args),
        "reference": _run(w.bulk_reference, *args),
        "reference+Job": _run(w.bulk_reference_jobs, *args),
    }
    notes = [
        "ours: submit_nowait(item) per item; ours, Job: submit_job_nowait(Job(...)) per item; "
        "ours, submit_many: one submit_many(items) call, its results awaited once",
        "reference+Job: the reference fed Job objects (the cost of one more object per job)",
    ]
    _with_peer(impls, _run(w.bulk_aiodataloader, *args), notes)
    result = run_alternating("bulk", impls, repeats, "reference")
    result.notes += notes
    return result


def bench_decorator(sizes: Sizes, repeats: int) -> Comparison:
    args = (sizes.fan_in_jobs, sizes.fan_in_tasks, BATCH_SIZE, INTERVAL)
    impls = {"@batch": _run(w.fan_in_decorator, *args), "reference": _run(w.fan_in_reference, *args)}
    return run_alternating("decorator (fan-in through @microbatching.batch)", impls, repeats, "reference")


def bench_sync(sizes: Sizes, repeats: int) -> Comparison:
    n, threads = sizes.sync_jobs, sizes.sync_threads
    impls = {
        "sync, def processor": lambda: w.sync_ours(n, threads, BATCH_SIZE, INTERVAL, False),
        "sync, async processor": lambda: w.sync_ours(n, threads, BATCH_SIZE, INTERVAL, True),
        "ours bulk": _run(w.bulk_ours, n, BATCH_SIZE, INTERVAL),
    }
    result = run_alternating(
        f"sync ({threads} threads, MicroBatching.submit_job)", impls, repeats, "ours bulk"
    )
    result.notes.append("ratio here is to our own async bulk (submit_job_nowait(Job)) on the same job count")
    return result


def bench_timer(sizes: Sizes, repeats: int) -> Comparison:
    args = (sizes.timer_seconds, 0.007, 10_000, 0.020)
    impls = {"ours": _run(w.timer_ours, *args), "reference": _run(w.timer_reference, *args)}
    result = run_alternating(
        "timer precision (size 10,000, interval 20 ms, a job every 7 ms)",
        impls,
        max(1, repeats // 2),
        "reference",
    )
    result.notes.append("late = dispatch - first job's submit - interval; medians of per-run p50/p99/min")
    result.notes.append(
        f"min over all runs: ours {min(r['late_min_ms'] for r in result.runs['ours']):.3f} ms"
    )
    return result


def bench_observability(sizes: Sizes, repeats: int) -> Comparison:
    args = (sizes.fan_in_jobs, sizes.fan_in_tasks, BATCH_SIZE, INTERVAL)
    impls = {
        "listeners+stats": _run(w.fan_in_observed, *args, 0.001),
        "listeners only": _run(w.fan_in_observed, *args, None),
        "plain": _run(w.fan_in_ours, *args),
    }
    result = run_alternating("observability (fan-in, ours)", impls, repeats, "plain")
    result.notes.append("a handler on every event, stats() polled every 1 ms; ratio = on / off")
    return result


def bench_memory(sizes: Sizes, repeats: int) -> Comparison:
    result = Comparison(f"memory (stream, max_pending={sizes.max_pending:,})", "-")
    for count in sizes.memory_counts:
        out = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--memory-child",
                str(count),
                "--max-pending",
                str(sizes.max_pending),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result.runs[f"{count:,} jobs"] = [json.loads(out.stdout)]
    peaks = [runs[0]["peak_rss_mb"] for runs in result.runs.values()]
    result.notes.append(f"peak RSS growth from fewest to most jobs: {peaks[-1] - peaks[0]:+.1f} MB")
    return result


def _rss_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in MB, from /proc (Linux).

    Not ``ru_maxrss``: Linux carries the parent's peak over fork and exec into it.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(count: int, max_pending: int) -> None:
    """Stream ``count`` jobs in this (fresh) process and print its peak RSS as JSON."""
    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    ok = asyncio.run(w.stream_ours(count, max_pending, BATCH_SIZE, INTERVAL))
    elapsed = time.perf_counter() - start
    if ok != count:
        raise w.BenchmarkError(f"memory: {ok} of {count} results were correct")
    print(
        json.dumps({"jobs_per_s": count / elapsed, "rss_before_mb": before, "peak_rss_mb": _rss_mb("VmHWM")})
    )


def bench_durable(sizes: Sizes, repeats: int) -> Comparison:
    return durable.bench(sizes.durable_jobs, max(1, repeats // 2), sizes.durable_peer_jobs)


def bench_adaptive(sizes: Sizes, repeats: int) -> Comparison:
    return adaptive.bench(sizes == QUICK)  # the virtual clock is exact: one run per configuration


def bench_queue(name: str, sizes: Sizes, repeats: int) -> list[Comparison]:
    """A broker queue's benchmark: its module's ``bench(quick, repeats)``."""
    module = importlib.import_module(f"bench_{name}")
    comparisons: list[Comparison] = module.bench(sizes == QUICK, repeats)
    return comparisons


BENCHES: dict[str, Callable[[Sizes, int], Comparison]] = {
    "fan-in": bench_fan_in,
    "bulk": bench_bulk,
    "decorator": bench_decorator,
    "sync": bench_sync,
    "timer": bench_timer,
    "observability": bench_observability,
    "memory": bench_memory,
    "durable": bench_durable,
    "adaptive": bench_adaptive,
}


def _source_version() -> str:
    """The commit of the library being measured, with ``-dirty`` if its sources have local edits."""
    package = os.path.dirname(os.path.abspath(microbatching.__file__))
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--exclude", "*"],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=10,
        )
        described = out.stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return "unknown"
    if not described:
        return "not a git checkout"
    commit = described.removesuffix("-dirty")
    return commit + (" + uncommitted edits in src/microbatching" if status.stdout.strip() else "")


def verdicts(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """The speed goals, each with its verdict in this run: "meets the goal" or "below the goal"."""
    lines = []

    def impl(name: str, key: str) -> dict[str, float]:
        found: dict[str, float] = summaries[name]["impls"].get(key, {})
        return found

    def mark(ok: bool, text: str) -> None:
        lines.append(f"{'meets the goal' if ok else 'below the goal'}: {text}")

    def at_least(name: str, key: str, goal: float, what: str, against: str = "the reference") -> None:
        ratio = impl(name, key)["ratio"]
        mark(ratio >= goal, f"{what}: {ratio:.2f}x {against} (goal >= {goal}x)")

    def ahead_of_peer(name: str, key: str, what: str) -> None:
        peer = impl(name, "aiodataloader")
        if peer:
            ratio = impl(name, key)["ratio"]
            mark(
                ratio > peer["ratio"],
                f"{what}: ahead of aiodataloader ({ratio:.2f}x vs {peer['ratio']:.2f}x)",
            )

    if "fan-in" in summaries:
        at_least("fan-in", "ours", 1.0, "fan-in, submit_nowait(item)")
        ahead_of_peer("fan-in", "ours", "fan-in, submit_nowait(item)")
    if "bulk" in summaries:
        at_least("bulk", "ours", 0.8, "bulk, submit_nowait(item)")
        ahead_of_peer("bulk", "ours", "bulk, submit_nowait(item)")
        at_least("bulk", "ours, Job", 0.65, "bulk, submit_job_nowait(Job)")
        at_least("bulk", "ours, submit_many", 1.2, "bulk, submit_many(items)")
    if "decorator" in summaries:
        at_least("decorator", "@batch", 0.95, "@batch fan-in")
    if "sync" in summaries:
        at_least("sync", "sync, def processor", 0.7, "sync, 8 threads, def processor", "our async bulk")
    if "timer" in summaries:
        ours, reference = impl("timer", "ours"), impl("timer", "reference")
        mark(
            ours["late_p99_ms"] <= reference["late_p99_ms"],
            f"timer: p99 lateness {ours['late_p99_ms']:.3f} ms, the reference's "
            f"{reference['late_p99_ms']:.3f} ms in the same run (goal: no later)",
        )
        earliest = summaries["timer"]["earliest_ms"]
        mark(
            earliest >= 0,
            f"timer: earliest dispatch {earliest:+.3f} ms after its interval (goal: never early)",
        )
    if "observability" in summaries:
        ratio = impl("observability", "listeners+stats")["ratio"]
        mark(ratio >= 0.9, f"observability: costs {1 - ratio:.1%} of throughput (goal <= 10%)")
    if "memory" in summaries:
        peaks = [m["peak_rss_mb"] for m in summaries["memory"]["impls"].values()]
        mark(
            peaks[-1] - peaks[0] <= 5.0,
            f"memory: peak RSS {peaks[0]:.1f} -> {peaks[-1]:.1f} MB (flat: <= +5 MB)",
        )
    if "durable" in summaries and "sqlite" in summaries["durable"]["impls"]:
        at_least("durable", "sqlite", 0.85, "durable sqlite", "a raw sqlite3 loop of the same statements")
        ours = impl("durable", "sqlite")["jobs_per_s"]
        for peer in durable.PEERS:
            figures = impl("durable", peer)
            if figures:
                lead = ours / figures["jobs_per_s"]
                mark(lead > 1.0, f"durable sqlite: {lead:.1f}x the jobs/s of {peer} (goal: ahead)")
    for ok, text in summaries.get("adaptive", {}).get("verdicts", []):
        mark(ok, text)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, one repeat: checks results, not speed"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=WORKLOADS + QUEUE_WORKLOADS,
        metavar="NAME",
        help=f"run only this workload (repeatable): {', '.join(WORKLOADS + QUEUE_WORKLOADS)} "
        "(the broker queues run only when named)",
    )
    parser.add_argument("--repeats", type=int, help="repeats per implementation (default 5, quick 1)")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-pending", type=int, default=10_000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.max_pending)
        return 0
    sizes = QUICK if args.quick else Sizes()
    repeats = args.repeats or sizes.repeats
    print(
        f"microbatching {microbatching.__version__}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{'QUICK (no speed judged)' if args.quick else 'full'}; repeats={repeats}; "
        f"batch_size={BATCH_SIZE}, interval={INTERVAL * 1e3:g} ms; library at {_source_version()}"
    )
    summaries: dict[str, dict[str, Any]] = {}
    for name in args.only or WORKLOADS:
        started = time.perf_counter()
        if name in QUEUE_WORKLOADS:
            results = bench_queue(name, sizes, repeats)
        else:
            results = [BENCHES[name](sizes, repeats)]
        for index, result in enumerate(results):
            summary = result.summary()
            if name == "timer":  # never early: judged on the earliest batch of every run
                summary["earliest_ms"] = min(run["late_min_ms"] for run in result.runs["ours"])
            summaries[name if index == 0 else f"{name}/{index}"] = summary
            print(format_table(summary), flush=True)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)
    print("== speed goals" + (" (quick sizes: speed NOT judged)" if args.quick else "") + " ==")
    for line in verdicts(summaries):
        print(line)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "sizes": asdict(sizes),
                    "repeats": repeats,
                    "quick": args.quick,
                    "python": platform.python_version(),
                    "results": summaries,
                },
                out,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
