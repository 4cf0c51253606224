"""The adaptive policy against fixed settings and two peers' rules, on the virtual clock.

``python benchmarks/adaptive.py [--quick] [--json PATH] [--plot PATH]``
(or ``python benchmarks/run.py --only adaptive``)

Every run is the real engine on :class:`~microbatching.testing.VirtualClockLoop` with a
synthetic device (``adaptive_sim.py``): exact, repeatable (seeded Poisson arrivals, the
same for every configuration of a scenario) and a few seconds of real time per hundred
runs.  The adaptive policy gets ``latency_target=0.1`` and ``batch_size=256`` as its hard
cap and no other setting.  The fixed grid is ``batch_size`` x ``batch_interval`` x
``max_concurrent_batches``.  Scenarios:

- S1: an affine cost, four loads: the adaptive policy's mean latency against the best
  fixed configuration that meets the target at that load.
- S2: a superlinear cost and a 5x burst: how soon the backlog drains, against fixed
  natural batching with a large cap.
- S3: three cost curves x three loads: which configurations meet the target everywhere.
- S4: ``objective="cost"`` at 15% load: processor calls per job.
- S5: the device turns 2x slower mid-run: seconds of windows whose p99 missed the target.
- S6: deadlines drawn from 50-500 ms at 1.3x the capacity: the share of jobs finished by
  their deadline, against the best fixed configuration (told the deadlines or not).
- S7: BentoML's CORK rule and Clipper's AIMD cap (``adaptive_peers.py``) in S1-S5.

Loads are shares of the device's capacity at its knee (the batch size, up to the hard
cap, with the most jobs per second).  Each scenario ends with a verdict line.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from adaptive_peers import aimd, cork
from adaptive_sim import Config, Curve, Outcome, Run, arrivals, fixed, simulate
from harness import Comparison

HARD_CAP = 256
TARGET = 0.1
AFFINE = Curve("affine", 0.005, 0.0001)
SUPERLINEAR = Curve("superlinear", 0.005, 0.0001, 0.000002)
STEP = Curve("step at 32", 0.008, step=32)
CURVES = (AFFINE, SUPERLINEAR, STEP)


@dataclass(frozen=True)
class Plan:
    """How much each scenario runs (full, or --quick for the test suite)."""

    seconds: float = 4.0
    sizes: tuple[int, ...] = (8, 32, 64, 128, 256)
    intervals: tuple[float, ...] = (0.0, 0.002, 0.01, 0.05)
    concurrency: tuple[int, ...] = (1, 2)
    s1_loads: tuple[float, ...] = (0.1, 0.3, 0.6, 0.9)
    s3_loads: tuple[float, ...] = (0.05, 0.5, 0.95)
    lingers: tuple[float, ...] = (0.002, 0.005, 0.01, 0.02, 0.05, 0.08)
    drift_seconds: float = 12.0
    burst_after: float = 6.0


QUICK = Plan(
    seconds=1.0,
    sizes=(32, 256),
    intervals=(0.0, 0.01),
    concurrency=(1,),
    s1_loads=(0.3, 0.9),
    s3_loads=(0.5,),
    lingers=(0.01, 0.05),
    drift_seconds=3.0,
    burst_after=2.0,
)


def adaptive(objective: str = "latency", hard_cap: int = HARD_CAP, shed: bool = False) -> Config:
    return Config.ours(
        f"adaptive ({objective}{', shed' if shed else ''})",
        latency_target=TARGET,
        objective=objective,
        batch_size=hard_cap,
        retry=None,
        shed=shed,
    )


#: Our run with ``shed=True`` in each S7 cell, set beside CORK (which sheds too).
SHEDDING = "ours (shed=True)"
CORK = "CORK (BentoML)"


def grid(plan: Plan) -> list[Config]:
    return [fixed(s, i, c) for s in plan.sizes for i in plan.intervals for c in plan.concurrency]


def steady(curve: Curve, load: float, seconds: float, seed: int = 1) -> Run:
    return Run(arrivals([(seconds, load * curve.capacity(HARD_CAP))], seed), curve)


@dataclass
class Scenario:
    """One scenario's rows (label, figures), its verdict and what the plot draws."""

    name: str
    rows: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    ok: bool = True
    verdict: str = ""
    notes: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    #: Per cell: ours, and each peer, for S7.
    cells: list[dict[str, Outcome]] = field(default_factory=list)

    def add(self, label: str, outcome: Outcome) -> None:
        self.rows.append((label, outcome.metrics()))


def meets(outcome: Outcome) -> bool:
    return outcome.p99 <= TARGET and not outcome.unfinished and not outcome.shed


def peers_in(run: Run) -> dict[str, Outcome]:
    """The peers' runs of a cell, and ours with shedding on (to set beside CORK's)."""
    configs = (cork(TARGET, HARD_CAP), aimd(TARGET, HARD_CAP))
    peers = {config.name: simulate(config, run) for config in configs}
    return {**peers, SHEDDING: simulate(adaptive(shed=True), run)}


def ties(ours: Outcome, theirs: Outcome) -> bool:
    """Ours at least ties on p99, throughput and shed."""
    return (
        ours.p99 <= theirs.p99 * 1.05 + 0.001
        and ours.throughput >= theirs.throughput * 0.99
        and ours.shed <= theirs.shed
    )


def s1(plan: Plan) -> Scenario:
    scenario = Scenario("S1 affine cost, four loads")
    worst = 0.0
    for load in plan.s1_loads:
        run = steady(AFFINE, load, plan.seconds)
        ours = simulate(adaptive(), run)
        fixed_runs = [(config, simulate(config, run)) for config in grid(plan)]
        passing = [(c, o) for c, o in fixed_runs if meets(o)]
        best_config, best = min(passing, key=lambda pair: pair[1].mean)
        ratio = ours.mean / best.mean
        worst = max(worst, ratio)
        scenario.ok &= meets(ours) and ratio <= 1.05
        scenario.add(f"S1 {load:.0%}: adaptive", ours)
        scenario.add(f"S1 {load:.0%}: best {best_config.name}", best)
        scenario.cells.append({"ours": ours, **peers_in(run)})
    scenario.verdict = (
        f"S1: mean latency at most {worst:.3f}x the best fixed configuration of {len(grid(plan))} "
        "at each load, p99 within the target (goal <= 1.05x)"
    )
    return scenario


def _recovery(outcome: Outcome, after: float) -> float:
    """Seconds after ``after`` until the backlog was below 100 for good (inf: never)."""
    last_high = after
    for at, pending, _ in outcome.timeline:
        if at >= after and pending >= 100:
            last_high = at
    end = outcome.timeline[-1][0] if outcome.timeline else after
    return float("inf") if last_high >= end - 0.1 else max(0.0, last_high + 0.05 - after)


def s2(plan: Plan) -> Scenario:
    scenario = Scenario("S2 superlinear cost, 5x burst")
    base = 0.4 * SUPERLINEAR.capacity(HARD_CAP)
    burst_end = plan.burst_after + 0.5
    phases = [(plan.burst_after, base), (0.5, 5 * base), (plan.seconds + 4.0, base)]
    run = Run(arrivals(phases, 2), SUPERLINEAR, drain=0.5)
    big = 1024
    runs = {
        "adaptive": simulate(adaptive(hard_cap=big), run),
        f"fixed size {big}, 0 ms, x1": simulate(fixed(big, 0.0), run),
        f"fixed size {HARD_CAP}, 0 ms, x1": simulate(fixed(HARD_CAP, 0.0), run),
    }
    recovery = {name: _recovery(outcome, burst_end) for name, outcome in runs.items()}
    for name, outcome in runs.items():
        scenario.add(f"S2: {name}", outcome)
        backlog = outcome.timeline[-1][1] if outcome.timeline else 0
        scenario.notes.append(
            f"S2 {name}: backlog under 100 {recovery[name]:.2f} s after the burst, {backlog} at the end"
        )
    ours = recovery["adaptive"]
    scenario.ok = ours <= 2.0
    scenario.verdict = (
        f"S2: backlog under 100 {ours:.2f} s after the burst (goal <= 2 s); fixed size {big}: "
        f"{recovery[f'fixed size {big}, 0 ms, x1']:.2f} s"
    )
    scenario.series = {"run": runs["adaptive"], "fixed": runs[f"fixed size {big}, 0 ms, x1"], "at": burst_end}
    scenario.cells.append({"ours": runs["adaptive"], **peers_in(run)})
    return scenario


def s3(plan: Plan) -> Scenario:
    scenario = Scenario("S3 three curves x three loads")
    configs = grid(plan)
    passes = {config.name: 0 for config in configs}
    ours_passes = 0
    cells = 0
    for curve in CURVES:
        for load in plan.s3_loads:
            run = steady(curve, load, plan.seconds, seed=3)
            ours = simulate(adaptive(), run)
            ours_passes += meets(ours)
            cells += 1
            scenario.add(f"S3 {curve.name} {load:.0%}: adaptive", ours)
            for config in configs:
                passes[config.name] += meets(simulate(config, run))
    best = max(passes.values())
    everywhere = [name for name, count in passes.items() if count == cells]
    leaders = ", ".join(name for name, count in passes.items() if count == best)
    scenario.notes.append(
        f"S3: fixed configurations meeting the target in all {cells} cells: {len(everywhere)} of "
        f"{len(configs)} (the best meets it in {best}: {leaders})"
    )
    scenario.ok = ours_passes == cells and not everywhere
    scenario.verdict = (
        f"S3: adaptive meets the target in {ours_passes} of {cells} cells; "
        f"{len(everywhere)} of {len(configs)} fixed configurations do in all"
    )
    return scenario


def s4(plan: Plan) -> Scenario:
    scenario = Scenario("S4 cost objective at 15% load")
    low = steady(AFFINE, 0.15, plan.seconds + 2.0, seed=4)
    high = steady(AFFINE, 0.95, plan.seconds, seed=4)
    ours = simulate(adaptive("cost"), low)
    ours_high = simulate(adaptive("cost"), high)
    natural = simulate(fixed(HARD_CAP, 0.0), low)
    scenario.add("S4 15%: adaptive (cost)", ours)
    scenario.add("S4 95%: adaptive (cost)", ours_high)
    scenario.add("S4 15%: natural batching (fixed 256, 0 ms)", natural)
    safe = []
    for linger in plan.lingers:
        config = fixed(HARD_CAP, linger)
        if meets(simulate(config, high)):
            safe.append((config, simulate(config, low)))
    best_config, best = min(safe, key=lambda pair: pair[1].calls_per_job)
    scenario.add(f"S4 15%: best linger safe at 95% ({best_config.name})", best)
    vs_natural = natural.calls_per_job / ours.calls_per_job
    vs_linger = best.calls_per_job / ours.calls_per_job
    scenario.ok = meets(ours) and meets(ours_high) and vs_natural >= 5 and vs_linger >= 2
    scenario.verdict = (
        f"S4: {vs_natural:.1f}x fewer calls per job than natural batching (goal >= 5x), {vs_linger:.2f}x "
        f"fewer than the best fixed linger that meets the target at 95% load (goal >= 2x); p99 "
        f"{ours.p99 * 1e3:.0f} ms at 15%, {ours_high.p99 * 1e3:.0f} ms at 95%"
    )
    if not meets(best):
        scenario.notes.append(f"S4: that linger misses the target at 15% load (p99 {best.p99 * 1e3:.0f} ms)")
    floor = fewest_calls_per_job(AFFINE, 0.15 * AFFINE.capacity(HARD_CAP))
    scenario.notes.append(
        f"S4: no policy makes fewer than {floor:.4f} calls per job at 15% load with every job within "
        f"the target (ours {ours.calls_per_job:.4f}, {floor / ours.calls_per_job:.0%} of that bound); "
        f"2x fewer than the linger would need {best.calls_per_job / 2:.4f}"
    )
    scenario.cells.append({"ours": simulate(adaptive(), low), **peers_in(low)})
    return scenario


def fewest_calls_per_job(curve: Curve, rate: float) -> float:
    """A lower bound on calls per job with every job's latency within the target, at ``rate`` jobs/s.

    A batch's first job waits while the batch collects for ``w`` seconds (``rate * w`` jobs
    on average) and then runs: ``w + curve(rate * w) <= TARGET``.  The largest such ``w``
    gives the fewest calls, ``1 / (rate * w)``; found by bisection (the left side grows with ``w``).
    """
    low, high = 0.0, TARGET
    for _ in range(60):
        mid = (low + high) / 2
        if mid + curve(max(1, round(rate * mid))) <= TARGET:
            low = mid
        else:
            high = mid
    return 1.0 / max(1.0, rate * low)


def violated_seconds(outcome: Outcome, after: float, width: float = 0.25) -> float:
    """Seconds of ``width`` windows from ``after`` on whose p99 missed the target."""
    return sum(width for at, p99 in outcome.windowed_p99(width) if at >= after and p99 > TARGET)


def s5(plan: Plan) -> Scenario:
    scenario = Scenario("S5 the device turns 2x slower")
    slower_at = plan.drift_seconds / 3
    times = arrivals([(plan.drift_seconds, 0.4 * SUPERLINEAR.capacity(HARD_CAP))], 5)
    run = Run(times, SUPERLINEAR, slower_at=slower_at, slower=2.0)
    ours = simulate(adaptive(), run)
    scenario.add("S5: adaptive", ours)
    others = {config.name: simulate(config, run) for config in (fixed(HARD_CAP, 0.0), fixed(64, 0.01))}
    for name, outcome in others.items():
        scenario.add(f"S5: {name}", outcome)
        scenario.notes.append(f"S5 {name}: target missed for {violated_seconds(outcome, slower_at):.2f} s")
    missed = violated_seconds(ours, slower_at)
    scenario.ok = missed <= 5.0
    scenario.verdict = f"S5: target missed for {missed:.2f} s after the slowdown (goal <= 5 s)"
    scenario.series = {"run": ours, "at": slower_at}
    scenario.cells.append({"ours": ours, **peers_in(run)})
    return scenario


def deadlines_for(times: Sequence[float], seed: int) -> list[float]:
    """A deadline per job, drawn uniformly from 50 to 500 ms."""
    rng = random.Random(seed)
    return [rng.uniform(0.05, 0.5) for _ in times]


def s6(plan: Plan) -> Scenario:
    """Deadlines U(50, 500) ms at 1.3x the device's capacity: the share of jobs finished on time.

    The fixed grid runs twice: as it is (the deadlines only measured) and told the deadlines
    (a late job then fails instead of running); the best of either is the bar.
    """
    scenario = Scenario("S6 deadlines U(50, 500) ms at 1.3x load")
    worst = {False: float("inf"), True: float("inf")}
    for curve in (AFFINE, SUPERLINEAR):
        times = arrivals([(plan.seconds, 1.3 * curve.capacity(HARD_CAP))], 6)
        told = Run(times, curve, deadlines=deadlines_for(times, 6))
        ours = simulate(adaptive(), told)
        scenario.add(f"S6 {curve.name}: adaptive with deadlines", ours)
        # A job is on time only if it ends by its deadline, so the device's work for the jobs
        # ends by the last arrival plus the longest deadline: no batcher can do more than that.
        bound = curve.capacity(HARD_CAP) * (times[-1] + 0.5) / len(times)
        scenario.notes.append(f"S6 {curve.name}: no batcher can have more than {min(1.0, bound):.1%} on time")
        for tell in (False, True):
            variant = replace(told, tell_deadlines=tell)
            runs = [(config.name, simulate(config, variant)) for config in grid(plan)]
            name, best = max(runs, key=lambda pair: pair[1].on_time_share)
            how = "told the deadlines" if tell else "deadlines only measured"
            scenario.add(f"S6 {curve.name}: best fixed, {how} ({name})", best)
            margin = 100 * (ours.on_time_share - best.on_time_share)
            worst[tell] = min(worst[tell], margin)
            scenario.notes.append(
                f"S6 {curve.name}: on time {ours.on_time_share:.1%} adaptive vs {best.on_time_share:.1%} "
                f"for the best fixed configuration, {how} ({name}): {margin:+.1f} points"
            )
    scenario.ok = min(worst.values()) >= 10
    scenario.verdict = (
        f"S6: on-time share {worst[False]:+.1f} points over the best fixed configuration with the "
        f"deadlines only measured, {worst[True]:+.1f} over the best told them (worst curve; goal >= +10)"
    )
    return scenario


def s7(scenarios: Sequence[Scenario]) -> Scenario:
    """Ours against each peer, cell by cell of S1-S5: ties or wins on p99, throughput and shed.

    Against CORK, which sheds, our run with ``shed=True`` is compared too (like with like).
    """
    scenario = Scenario("S7 against BentoML's CORK and Clipper's AIMD")
    tally: dict[str, list[int]] = {}
    for source in scenarios:
        for index, cell in enumerate(source.cells, 1):
            pairs = [("ours", peer) for peer in cell if peer not in ("ours", SHEDDING)]
            if SHEDDING in cell:
                pairs.append((SHEDDING, CORK))
                scenario.add(f"S7 {source.name[:2]} cell {index}: {SHEDDING}", cell[SHEDDING])
            for mine, peer in pairs:
                ours, theirs = cell[mine], cell[peer]
                won = ties(ours, theirs)
                key = peer if mine == "ours" else f"{peer} ({SHEDDING})"
                counts = tally.setdefault(key, [0, 0])
                counts[0] += won
                counts[1] += 1
                if mine == "ours":
                    scenario.add(f"S7 {source.name[:2]} cell {index}: {peer}", theirs)
                scenario.notes.append(
                    f"S7 {source.name[:2]} cell {index}, {mine} vs {peer}: "
                    f"{'ties or beats' if won else 'loses'} (p99 "
                    f"{ours.p99 * 1e3:.1f} vs {theirs.p99 * 1e3:.1f} ms, {ours.throughput:,.0f} vs "
                    f"{theirs.throughput:,.0f} jobs/s, shed {ours.shed} vs {theirs.shed})"
                )
    scenario.ok = all(won == total for won, total in tally.values())
    scenario.verdict = "S7: adaptive ties or beats on p99, throughput and shed in " + "; ".join(
        f"{won} of {total} cells against {peer}" for peer, (won, total) in tally.items()
    )
    return scenario


SCENARIOS: tuple[Callable[[Plan], Scenario], ...] = (s1, s2, s3, s4, s5, s6)


def run_all(plan: Plan, progress: Callable[[str], None] = lambda _: None) -> list[Scenario]:
    logging.getLogger("microbatching").setLevel(logging.ERROR)  # the runs end by abandoning backlogs
    done = []
    for make in SCENARIOS:
        done.append(make(plan))
        progress(done[-1].verdict)
    done.append(s7(done))
    return done


class AdaptiveComparison(Comparison):
    """The scenarios as one benchmark table, with a verdict per scenario."""

    def __init__(self, scenarios: list[Scenario]) -> None:
        super().__init__("adaptive policy (virtual clock; latency target 100 ms)", "-")
        for scenario in scenarios:
            for label, metrics in scenario.rows:
                self.runs[label] = [metrics]
            self.notes.extend(scenario.notes)
        self.verdicts = [(s.ok, s.verdict) for s in scenarios]

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["verdicts"] = self.verdicts
        return out


def bench(quick: bool) -> AdaptiveComparison:
    """``run.py --only adaptive``: every scenario, as one table (and the real-clock run unless quick)."""
    result = AdaptiveComparison(run_all(QUICK if quick else Plan()))
    if not quick:
        add_real_run(result)
    return result


def add_real_run(result: AdaptiveComparison) -> None:
    """The real-clock run beside the simulation (figures only: the machine's noise is in them)."""
    from adaptive_real import run_real

    for label, metrics in run_real():
        result.runs[label] = [metrics]
    result.notes.append("real clock: a numpy model on this machine's shared cores; figures, no verdict")


def main(argv: list[str] | None = None) -> int:
    from harness import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny runs: checks that it works, judges nothing"
    )
    parser.add_argument("--json", metavar="PATH", help="also save the figures as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw S2 and S5 over time (needs matplotlib)")
    args = parser.parse_args(argv)
    scenarios = run_all(QUICK if args.quick else Plan(), lambda line: print(line, flush=True))
    result = AdaptiveComparison(scenarios)
    if not args.quick:
        add_real_run(result)
    print(format_table(result.summary()))
    for ok, verdict in result.verdicts:
        print(f"{'meets the goal' if ok else 'below the goal'}: {verdict}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result.summary(), out, indent=2)
    if args.plot:
        from adaptive_plot import draw

        draw(scenarios, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
