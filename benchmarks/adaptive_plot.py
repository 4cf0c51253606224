"""The adaptive benchmark's figure: S2's cost curve and what the policy learnt, S2 and S5 over time.

Drawn by ``python benchmarks/adaptive.py --plot docs/img/adaptive.png`` (needs matplotlib).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adaptive_sim import Outcome


def draw(scenarios: Sequence[Any], path: str) -> None:
    """Four panels: S2's true and learnt cost per size, S2's backlog and cap, S5's p99 and cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {s.name[:2]: s for s in scenarios}
    s2, s5 = by_name["S2"].series, by_name["S5"].series
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    _cost_curve(axes[0], s2["run"], by_name["S2"])
    _over_time(axes[1], s2["run"], s2["fixed"], s2["at"], "S2: 5x burst on a superlinear cost")
    _latency_over_time(axes[2], s5["run"], s5["at"], "S5: the device turns 2x slower")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cost_curve(ax: Any, run: Outcome, scenario: Any) -> None:
    from adaptive import SUPERLINEAR

    policy = run.policy
    sizes = range(1, 121)
    ax.plot(sizes, [SUPERLINEAR(n) * 1e3 for n in sizes], label="true cost t(b)", color="grey")
    if policy is not None:
        learnt = sorted(policy.cost_per_size.items())
        ax.plot([s for s, _ in learnt], [t * 1e3 for _, t in learnt], "o", ms=3, label="learnt (end of S2)")
        if policy.knee is not None:
            ax.axvline(policy.knee, ls="--", color="C1", label=f"learnt knee {policy.knee}")
    ax.axvline(SUPERLINEAR.knee(256), ls=":", color="k", label=f"true knee {SUPERLINEAR.knee(256)}")
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per batch")
    ax.set_title("S2: cost per batch size")
    ax.legend(fontsize=8)


def _over_time(ax: Any, ours: Outcome, fixed: Outcome, at: float, title: str) -> None:
    for outcome, label in ((ours, "backlog, adaptive"), (fixed, "backlog, fixed size 1024")):
        ax.plot([t for t, _, _ in outcome.timeline], [p for _, p, _ in outcome.timeline], label=label)
    ax.set_yscale("symlog", linthresh=10)
    ax.axvline(at, ls=":", color="k", label="burst ends")
    ax.set_xlabel("seconds")
    ax.set_ylabel("jobs not yet final")
    _cap(ax, ours)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")


def _latency_over_time(ax: Any, ours: Outcome, at: float, title: str) -> None:
    from adaptive import TARGET

    windows = ours.windowed_p99()
    ax.plot([t for t, _ in windows], [p * 1e3 for _, p in windows], label="p99 per 0.25 s, adaptive")
    ax.axhline(TARGET * 1e3, ls="--", color="C3", label="latency target")
    ax.axvline(at, ls=":", color="k", label="2x slower from here")
    ax.set_xlabel("seconds")
    ax.set_ylabel("ms")
    _cap(ax, ours)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")


def _cap(ax: Any, ours: Outcome) -> None:
    twin = ax.twinx()
    times, caps = [t for t, _, _ in ours.timeline], [c or 0 for _, _, c in ours.timeline]
    twin.step(times, caps, color="C2", where="post")
    twin.set_ylabel("adaptive cap (green)")
