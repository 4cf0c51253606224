"""Tuning curve: throughput and p99 latency against batch_size and batch_interval.

``python benchmarks/tuning_curve.py [--quick] [--out docs/img/tuning_curve.png]``

The real library (``AsyncMicroBatching``, default ``max_concurrent_batches=1``) runs a
synthetic processor with a per-call cost: ``await asyncio.sleep(per_call + per_item * n)``
for a batch of ``n`` jobs (5 ms + 0.05 ms per job by default: a round trip, a transaction,
a model forward pass).  Jobs arrive at a fixed rate (2,000/s by default), each submitted
alone and awaited by its own future.  Left: ``batch_size`` swept at a 5 ms interval.
Right: ``batch_interval`` swept at ``batch_size=100``.  Each run has ``--seconds`` of
arrivals, then waits at most as long again for the backlog; a point is the median of
``--repeats`` runs.  A run "fell behind" when its jobs were not all done by then (its p99
then counts the unfinished jobs with their age at the end: a lower bound) or completed
at less than 90% of the arrival rate.  About 30 s in all (``--quick``: a few seconds, for
the tests).  Needs matplotlib for the figure (``python -m pip install '.[bench]'``);
``--no-plot`` prints the table only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import statistics
import time
from dataclasses import dataclass

from microbatching import AsyncMicroBatching, Job

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "docs", "img", "tuning_curve.png"))
SIZES = (1, 2, 5, 10, 20, 50, 100, 200, 500)
INTERVALS_MS = (0, 1, 2, 5, 10, 20, 50)
SIZE_SWEEP_INTERVAL = 0.005
INTERVAL_SWEEP_SIZE = 100


@dataclass(frozen=True)
class Point:
    """One run: what was set, and what came out."""

    batch_size: int
    batch_interval: float
    jobs_per_s: float  # completions per second, first to last
    p50_ms: float
    p99_ms: float  # submit-to-result; jobs not done at the end count with their age then
    mean_batch: float
    kept_up: bool  # every job done within the drain allowance, at >= 90% of the arrival rate


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def run_point(
    batch_size: int, batch_interval: float, *, rate: float, seconds: float, per_call: float, per_item: float
) -> Point:
    """Submit ``rate`` jobs/s for ``seconds`` to a batcher with these settings and measure."""

    async def processor(jobs: list[Job[int]]) -> list[int]:
        await asyncio.sleep(per_call + per_item * len(jobs))
        return [job.data for job in jobs]

    clock = time.perf_counter
    total = int(rate * seconds)
    submitted = [0.0] * total
    finished = [math.nan] * total

    def record(i: int, future: asyncio.Future[int]) -> None:
        if not future.cancelled() and future.exception() is None:
            finished[i] = clock()

    mb = AsyncMicroBatching(None, processor, batch_size=batch_size, batch_interval=batch_interval, retry=None)
    mb.start()
    futures: list[asyncio.Future[int]] = []
    start = clock()
    for i in range(total):  # a fixed arrival schedule: job i is due at start + i / rate
        due = start + i / rate
        if due > clock():
            await asyncio.sleep(due - clock())
        submitted[i] = clock()
        future = mb.submit_job_nowait(Job(i, i))
        future.add_done_callback(lambda f, i=i: record(i, f))
        futures.append(future)
    await asyncio.wait(futures, timeout=seconds)  # the backlog gets as long again as the arrivals
    await asyncio.sleep(0)  # let the done-callbacks of the last results run
    end = clock()
    stats = mb.stats()
    await mb.shutdown(cancel=True)  # what is left fails with JobCancelledError
    await asyncio.gather(*futures, return_exceptions=True)
    done = [i for i in range(total) if not math.isnan(finished[i])]
    ages = [(end if math.isnan(finished[i]) else finished[i]) - submitted[i] for i in range(total)]
    # Completions per second from the first to the last: the rate the batcher sustained
    # (the wait before the first result and after the last arrival do not dilute it).
    times = sorted(finished[i] for i in done)
    throughput = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return Point(
        batch_size=batch_size,
        batch_interval=batch_interval,
        jobs_per_s=throughput,
        p50_ms=_percentile(ages, 0.50) * 1e3,
        p99_ms=_percentile(ages, 0.99) * 1e3,
        mean_batch=stats.batch_size.mean,
        kept_up=len(done) == total and throughput >= 0.9 * rate,
    )


def median_point(runs: list[Point]) -> Point:
    """The median of each figure over repeated runs of one setting (steadier than one run)."""
    return Point(
        batch_size=runs[0].batch_size,
        batch_interval=runs[0].batch_interval,
        jobs_per_s=statistics.median(r.jobs_per_s for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        mean_batch=statistics.median(r.mean_batch for r in runs),
        kept_up=sum(r.kept_up for r in runs) * 2 > len(runs),
    )


def sweep(
    quick: bool, rate: float, seconds: float, repeats: int, per_call: float, per_item: float
) -> dict[str, list[Point]]:
    """Both sweeps, printing a line per point as it goes."""
    sizes = (1, 10, 100) if quick else SIZES
    intervals = (0, 5, 20) if quick else INTERVALS_MS
    kw = {"rate": rate, "seconds": seconds, "per_call": per_call, "per_item": per_item}
    print(
        f"arrivals {rate:,.0f} jobs/s for {seconds:g} s per run, median of {repeats} runs per point; "
        f"processor {per_call * 1e3:g} ms per call + {per_item * 1e3:g} ms per job; max_concurrent_batches=1"
    )
    settings = [("size", size, SIZE_SWEEP_INTERVAL) for size in sizes]
    settings += [("interval", INTERVAL_SWEEP_SIZE, ms / 1e3) for ms in intervals]
    out: dict[str, list[Point]] = {"size": [], "interval": []}
    for key, size, interval in settings:
        runs = [asyncio.run(run_point(size, interval, **kw)) for _ in range(repeats)]
        out[key].append(median_point(runs))
        _print(out[key][-1])
    return out


def _print(p: Point) -> None:
    verdict = "" if p.kept_up else "  (fell behind: p99 is a lower bound)"
    print(
        f"batch_size={p.batch_size:<4} batch_interval={p.batch_interval * 1e3:>3g} ms: "
        f"{p.jobs_per_s:>7,.0f} jobs/s, p50 {p.p50_ms:7.1f} ms, p99 {p.p99_ms:7.1f} ms, "
        f"mean batch {p.mean_batch:6.1f}{verdict}",
        flush=True,
    )


def smallest_size_that_keeps_up(rate: float, per_call: float, per_item: float) -> float:
    """The batch size whose capacity ``b / (per_call + per_item * b)`` equals ``rate``."""
    return math.inf if rate * per_item >= 1 else rate * per_call / (1 - rate * per_item)


def draw(data: dict[str, list[Point]], out: str, rate: float, per_call: float, per_item: float) -> None:
    """Save the figure: two panels, throughput (left axis) and p99 latency (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda y, _pos: f"{y:g}")
    fig, panels = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    setups = (
        ("size", f"batch_size (batch_interval {SIZE_SWEEP_INTERVAL * 1e3:g} ms)"),
        ("interval", f"batch_interval, ms (batch_size {INTERVAL_SWEEP_SIZE})"),
    )
    for ax, (key, xlabel) in zip(panels, setups, strict=True):
        points = data[key]
        xs = [p.batch_size if key == "size" else p.batch_interval * 1e3 for p in points]
        behind = [x for x, p in zip(xs, points, strict=True) if not p.kept_up]
        if behind:  # shade the settings that could not keep up with the arrivals
            left = min(xs) * 0.8 if key == "size" else min(xs) - 0.5
            right = max(behind) * 1.15
            ax.axvspan(left, right, color="tab:red", alpha=0.08, linewidth=0, label="falls behind")
        ax.plot(xs, [p.jobs_per_s for p in points], "o-", color="tab:blue", label="throughput")
        ax.axhline(rate, color="tab:blue", linestyle=":", linewidth=1, label=f"arrival rate ({rate:,.0f}/s)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("throughput, jobs/s", color="tab:blue")
        ax.set_ylim(0, rate * 1.25)
        lat = ax.twinx()
        lat.plot(xs, [p.p99_ms for p in points], "s--", color="tab:red", label="p99 latency")
        lat.set_ylabel("p99 submit-to-result latency, ms", color="tab:red")
        if key == "size":
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(plain)
            lat.set_yscale("log")
            lat.set_ylim(min(p.p99_ms for p in points) / 2, max(p.p99_ms for p in points) * 1.5)
            lat.yaxis.set_major_formatter(plain)
            lat.yaxis.set_minor_formatter(FuncFormatter(lambda _y, _pos: ""))
            needed = smallest_size_that_keeps_up(rate, per_call, per_item)
            if math.isfinite(needed):
                ax.axvline(needed, color="gray", linestyle="--", linewidth=1,
                           label=f"capacity = arrival rate ({needed:.0f})")  # fmt: skip
        else:
            lat.set_ylim(0, max(p.p99_ms for p in points) * 1.2)
        handles = ax.get_legend_handles_labels()[0] + lat.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle(
        f"Processor: {per_call * 1e3:g} ms per call + {per_item * 1e3:g} ms per job; "
        f"{rate:,.0f} jobs/s arriving; one batch at a time",
        fontsize=10,
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three points per sweep, 0.2 s each")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to save the PNG")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    parser.add_argument("--rate", type=float, default=2_000.0, help="arrivals per second")
    parser.add_argument("--seconds", type=float, help="seconds of arrivals per run (0.5, quick 0.2)")
    parser.add_argument("--repeats", type=int, help="runs per point, the median is kept (3, quick 1)")
    parser.add_argument("--per-call", type=float, default=0.005, help="processor seconds per call")
    parser.add_argument("--per-item", type=float, default=0.00005, help="processor seconds per job")
    args = parser.parse_args(argv)
    seconds = args.seconds or (0.2 if args.quick else 0.5)
    repeats = args.repeats or (1 if args.quick else 3)
    # A point that fell behind ends with shutdown(cancel=True), which logs a warning: expected here.
    logging.getLogger("microbatching").addHandler(logging.NullHandler())
    data = sweep(args.quick, args.rate, seconds, repeats, args.per_call, args.per_item)
    if not args.no_plot:
        draw(data, args.out, args.rate, args.per_call, args.per_item)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
