"""The adaptive policy: its options, its cost model, the caps it finds, and what stats() shows."""

from __future__ import annotations

import asyncio
import math
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import vrun

from microbatching import AsyncMicroBatching, MicroBatching, batch
from microbatching._engine.adaptive import CostModel
from microbatching._options import Options
from microbatching.cli import main as cli_main


def superlinear(size: int) -> float:
    """5 ms a call, 0.1 ms a job, and a square term: the most jobs per second at 50."""
    return 0.005 + 0.0001 * size + 0.000002 * size * size


def affine(size: int) -> float:
    return 0.005 + 0.0001 * size


async def run_poisson(
    mb: AsyncMicroBatching, rate: Callable[[float], float], seconds: float, seed: int = 1
) -> list[float]:
    """Submit items at a Poisson ``rate(elapsed)`` for ``seconds``; each job's latency, in order."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    start = loop.time()
    latencies: list[float] = []
    futures = []

    def done(submitted: float) -> Callable[[Any], None]:
        return lambda _: latencies.append(loop.time() - submitted)

    while loop.time() - start < seconds:
        await asyncio.sleep(rng.expovariate(rate(loop.time() - start)))
        future = mb.submit_nowait(0)
        future.add_done_callback(done(loop.time()))
        futures.append(future)
    await asyncio.gather(*futures)
    return latencies


def sleeping_processor(cost: Callable[[int], float], sizes: list[int] | None = None) -> Any:
    async def process(items: list[Any]) -> list[Any]:
        if sizes is not None:
            sizes.append(len(items))
        await asyncio.sleep(cost(len(items)))
        return items

    return process


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


# -- options -------------------------------------------------------------------------------


def test_a_latency_target_alone_chooses_the_adaptive_policy() -> None:
    assert Options(latency_target=0.1).adaptive
    assert Options(policy="adaptive", latency_target=0.1, objective="COST").objective == "cost"
    assert not Options().adaptive
    assert not Options(policy="fixed").adaptive


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"policy": "adaptive"}, TypeError, "needs latency_target="),
        ({"policy": "fixed", "latency_target": 0.1}, TypeError, "no effect with policy='fixed'"),
        ({"objective": "cost"}, TypeError, "without latency_target="),
        ({"latency_target": 0}, ValueError, "latency_target must be finite and > 0"),
        ({"latency_target": "100ms"}, TypeError, "latency_target must be a number of seconds"),
        ({"latency_target": 0.1, "objective": "speed"}, ValueError, "objective must be one of latency, cost"),
        ({"policy": "smart", "latency_target": 0.1}, ValueError, "policy must be one of fixed, adaptive"),
    ],
)
def test_bad_policy_options_are_refused_clearly(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        AsyncMicroBatching(None, lambda jobs: jobs, **options)


def test_a_misspelt_policy_option_gets_a_suggestion() -> None:
    with pytest.raises(TypeError, match="did you mean 'latency_target'"):
        AsyncMicroBatching(None, lambda jobs: jobs, latency_targt=0.1)


# -- the cost model ------------------------------------------------------------------------


def test_the_cost_model_learns_a_noisy_curve_and_shrugs_off_a_stray_batch() -> None:
    model = CostModel()
    rng = random.Random(3)
    for _ in range(400):
        size = rng.randint(1, 100)
        model.observe(size, superlinear(size) * rng.uniform(0.9, 1.1))
    for size in (1, 10, 30, 50, 90):
        assert model.predict(size) == pytest.approx(superlinear(size), rel=0.1)
    before = model.predict(50)
    model.observe(50, superlinear(50) * 100)  # one batch stalled (a GC pause, a page fault)
    assert model.predict(50) == pytest.approx(before, rel=0.4)


def test_the_cost_model_notices_a_slowdown_at_sizes_it_no_longer_sees() -> None:
    model = CostModel()
    for _ in range(5):  # every size measured a few times
        for size in range(1, 101):
            model.observe(size, affine(size))
    for _ in range(40):  # the processor turns 2x slower; only size 20 runs now
        model.observe(20, 2 * affine(20))
    assert model.predict(20) == pytest.approx(2 * affine(20), rel=0.05)
    assert model.predict(90) == pytest.approx(2 * affine(90), rel=0.15)


def test_the_cost_model_extrapolates_along_the_last_slope() -> None:
    model = CostModel()
    assert model.predict(10) is None
    model.observe(10, affine(10))
    model.observe(20, affine(20))
    assert model.predict(40) == pytest.approx(affine(40))
    assert model.predict(5) == pytest.approx(affine(10))  # below the smallest seen: no less than it


# -- what the policy decides ---------------------------------------------------------------


def test_a_backlog_on_a_superlinear_processor_is_capped_at_its_knee() -> None:
    sizes: list[int] = []

    async def main() -> Any:
        mb = AsyncMicroBatching(
            None, sleeping_processor(superlinear, sizes), takes="items", batch_size=1000, latency_target=0.5
        )
        # A burst past what any batch size can do (3,333 jobs a second at best), then 2,500/s
        await run_poisson(mb, lambda t: 6000.0 if t < 0.5 else 2500.0, 4.0)
        stats = mb.stats()
        await mb.shutdown()
        return stats

    stats = vrun(main())
    policy = stats.policy
    assert policy is not None and policy.knee is not None
    assert 35 <= policy.knee <= 70, policy  # the true knee: sqrt(5 / 0.002) = 50
    assert stats.batches_by_trigger["knee"] > 0
    assert max(sizes[len(sizes) // 2 :]) <= 1.25 * 70  # probes past the knee stay bounded
    assert stats.buffered < 100  # the backlog drains
    assert set(policy.cost_per_size) and all(v > 0 for v in policy.cost_per_size.values())


def test_a_processor_turning_twice_as_slow_does_not_leave_the_cap_below_what_keeps_up() -> None:
    # 40% of the knee's throughput, then the processor turns 2x slower: 80%.  Batches caught
    # by the slowdown before the model's shared drift took it leave their sizes' estimates a
    # few percent too slow; the cap must not settle below them for good (the backlog would
    # grow: 14 jobs a batch do not keep up here, about 20 do).
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def process(items: list[Any]) -> list[Any]:
            factor = 2.0 if loop.time() - start >= 3.0 else 1.0
            await asyncio.sleep(factor * superlinear(len(items)))
            return items

        mb = AsyncMicroBatching(None, process, takes="items", batch_size=256, latency_target=0.1)
        rate = 0.4 * 50 / superlinear(50)
        latencies = await run_poisson(mb, lambda t: rate, 7.0, seed=5)
        await mb.shutdown()
        return latencies

    latencies = vrun(main())
    late = latencies[len(latencies) * 3 // 7 :]  # in completion order: those after the slowdown
    assert p99(late) <= 0.1, f"p99 {p99(late) * 1e3:.0f} ms after the slowdown, target 100 ms"


def test_under_the_latency_objective_a_lone_job_leaves_on_the_next_loop_turn() -> None:
    async def main() -> tuple[list[float], Any]:
        mb = AsyncMicroBatching(None, sleeping_processor(affine), takes="items", latency_target=0.1)
        latencies = await run_poisson(mb, lambda t: 5.0, 2.0)
        stats = mb.stats()
        await mb.shutdown()
        return latencies, stats

    latencies, stats = vrun(main())
    assert max(latencies) == pytest.approx(affine(1))
    assert stats.batches_by_trigger["idle"] == stats.batches
    assert stats.policy is not None and stats.policy.wait == 0


def test_the_cost_objective_waits_for_company_within_the_target() -> None:
    def run(objective: str) -> tuple[list[float], list[int]]:
        sizes: list[int] = []

        async def main() -> list[float]:
            processor = sleeping_processor(affine, sizes)
            mb = AsyncMicroBatching(None, processor, takes="items", latency_target=0.1, objective=objective)
            latencies = await run_poisson(mb, lambda t: 300.0, 6.0)
            await mb.shutdown()
            return latencies

        return vrun(main()), sizes

    natural, natural_sizes = run("latency")
    cheap, cheap_sizes = run("cost")
    assert len(cheap_sizes) * 5 <= len(natural_sizes)
    assert p99(cheap) <= 0.1
    assert p99(natural) < p99(cheap)


def test_stats_show_the_policy_only_when_adaptive() -> None:
    async def main() -> tuple[Any, Any]:
        fixed = AsyncMicroBatching(None, sleeping_processor(affine), takes="items")
        adaptive = AsyncMicroBatching(None, sleeping_processor(affine), takes="items", latency_target=0.05)
        for mb in (fixed, adaptive):
            await asyncio.gather(*(mb.submit_nowait(i) for i in range(50)))
        out = fixed.stats(), adaptive.stats()
        await fixed.shutdown()
        await adaptive.shutdown()
        return out

    fixed, adaptive = vrun(main())
    assert fixed.policy is None and fixed.as_dict()["policy"] is None
    shown = adaptive.as_dict()["policy"]
    assert shown["objective"] == "latency" and shown["latency_target"] == 0.05
    assert shown["cap"] >= 1 and shown["cost_per_size"]


def test_assigning_batch_size_lowers_the_hard_cap_of_the_adaptive_policy() -> None:
    sizes: list[int] = []

    async def main() -> None:
        mb = AsyncMicroBatching(
            None, sleeping_processor(affine, sizes), takes="items", batch_size=64, latency_target=1.0
        )
        await run_poisson(mb, lambda t: 5000.0, 1.0)
        mb.batch_size = 10
        sizes.clear()
        await run_poisson(mb, lambda t: 5000.0, 0.5, seed=2)
        await mb.shutdown()

    vrun(main())
    assert sizes and max(sizes) <= 10


# -- every facade ----------------------------------------------------------------------------


def test_the_sync_batcher_and_the_decorator_take_the_policy_options() -> None:
    with MicroBatching(None, lambda items: [x * 2 for x in items], takes="items", latency_target=0.05) as mb:
        handles = [mb.submit(i) for i in range(20)]
        assert [h.result(timeout=5) for h in handles] == [i * 2 for i in range(20)]
        assert mb.stats().policy is not None

    @batch(latency_target=0.05, objective="cost")
    async def double(items: list[int]) -> list[int]:
        return [x * 2 for x in items]

    async def main() -> list[int]:
        return list(await asyncio.gather(*(double(i) for i in range(10))))

    assert vrun(main()) == [i * 2 for i in range(10)]
    with pytest.raises(TypeError, match="needs latency_target"):
        batch(policy="adaptive")


def test_the_worker_takes_a_latency_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "procs_adaptive.py").write_text("def echo(jobs):\n    return [job.data for job in jobs]\n")
    queue = f"sqlite:///{tmp_path / 'jobs.db'}"
    assert cli_main(["enqueue", "--queue", queue, *map(str, range(30))]) == 0
    worker = subprocess.run(
        [sys.executable, "-m", "microbatching", "worker", "procs_adaptive:echo", "--queue", queue,
         "--latency-target", "0.05", "--objective", "cost", "--until-empty"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert cli_main(["worker", "procs_adaptive:echo", "--queue", queue, "--objective", "cost"]) == 2
    assert "--objective needs --latency-target" in capsys.readouterr().err
    assert cli_main(["worker", "procs_adaptive:echo", "--queue", queue, "--latency-target", "0"]) == 2
