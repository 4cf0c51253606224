"""Validated batching options and processor resolution."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from ._retry import RetryPolicy
from ._validate import number, one_of, positive_int, seconds

__all__ = [
    "DEFAULT_BATCH_INTERVAL",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_RETRY",
    "OBJECTIVES",
    "POLICIES",
    "Options",
    "check_option_names",
    "check_processor_slot",
]

#: Large enough to amortise a per-call cost (a round trip, a model forward pass) well,
#: small enough that one batch's processing stays short.
DEFAULT_BATCH_SIZE = 100
#: 50 ms: a job waits at most this long for company, a delay most interactive callers
#: tolerate and long enough to gather a useful batch at a few hundred jobs per second.
DEFAULT_BATCH_INTERVAL = 0.05
#: Intervals above this are more often milliseconds mistaken for seconds than meant: warned of.
_LONGEST_USUAL_INTERVAL = 10.0
#: Three attempts, 0.1 s then 0.2 s apart (each cut by up to half at random).
DEFAULT_RETRY = RetryPolicy()
#: How batches are formed: ``"fixed"`` (by ``batch_size`` and ``batch_interval``) or
#: ``"adaptive"`` (by a latency target, from a model of the processor learnt as it runs).
POLICIES = ("fixed", "adaptive")
#: What the adaptive policy optimises once the latency target is met.
OBJECTIVES = ("latency", "cost")


@dataclass(frozen=True)
class Options:
    """The batching options shared by both batchers, validated at construction."""

    batch_size: int = DEFAULT_BATCH_SIZE
    batch_interval: float = DEFAULT_BATCH_INTERVAL
    max_batch_weight: float | None = None
    weight: Callable[[Any], float] | None = None
    retry: RetryPolicy | None = DEFAULT_RETRY
    max_concurrent_batches: int = 1
    max_pending: int | None = None
    batch_timeout: float | None = None
    #: What the processor receives: ``"jobs"`` (``Job`` objects) or ``"items"`` (their data).
    takes: str = "jobs"
    #: ``"fixed"`` or ``"adaptive"``; ``None``: adaptive when ``latency_target`` is given.
    policy: str | None = None
    #: Seconds from submit to result the adaptive policy keeps the 99th percentile under.
    latency_target: float | None = None
    #: ``"latency"`` (lowest mean latency) or ``"cost"`` (fewest processor calls per job).
    objective: str = "latency"
    #: Refuse a submit at once (``OverloadedError``) when the adaptive policy predicts the job
    #: would miss ``latency_target``, instead of queueing it.
    shed: bool = False

    def __post_init__(self) -> None:
        positive_int("batch_size", self.batch_size)
        positive_int("max_concurrent_batches", self.max_concurrent_batches)
        seconds("batch_interval", self.batch_interval)
        if self.batch_interval > _LONGEST_USUAL_INTERVAL:
            warnings.warn(
                f"batch_interval is in seconds: {self.batch_interval!r} lets a partial batch wait "
                f"{self.batch_interval!r} s; for {self.batch_interval!r} ms write "
                f"batch_interval={self.batch_interval / 1000!r}",
                UserWarning,
                stacklevel=4,
            )
        if self.max_pending is not None:
            positive_int("max_pending", self.max_pending)
        if self.batch_timeout is not None:
            seconds("batch_timeout", self.batch_timeout, allow_zero=False)
        if self.max_batch_weight is not None:
            number("max_batch_weight", self.max_batch_weight, strict=True)
            if not callable(self.weight):
                raise TypeError("max_batch_weight needs weight=, a callable giving each job's weight")
        elif self.weight is not None:
            raise TypeError("weight= has no effect without max_batch_weight=")
        if self.takes not in ("jobs", "items"):
            raise ValueError(f"takes must be 'jobs' or 'items', got {self.takes!r}")
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {self.retry!r}")
        self._check_policy()

    @property
    def adaptive(self) -> bool:
        """Whether batches are formed by the adaptive policy."""
        return self.policy == "adaptive" or (self.policy is None and self.latency_target is not None)

    def _check_policy(self) -> None:
        if self.policy is not None:
            object.__setattr__(self, "policy", one_of("policy", self.policy, POLICIES))
        object.__setattr__(self, "objective", one_of("objective", self.objective, OBJECTIVES))
        if self.latency_target is not None:
            seconds("latency_target", self.latency_target, allow_zero=False)
        if self.policy == "adaptive" and self.latency_target is None:
            raise TypeError("policy='adaptive' needs latency_target=, in seconds (e.g. latency_target=0.1)")
        if not self.adaptive and self.latency_target is not None:
            raise TypeError("latency_target= has no effect with policy='fixed' (use policy='adaptive')")
        if not self.adaptive and self.objective != "latency":
            raise TypeError("objective= has no effect without latency_target= (the adaptive policy)")
        if not isinstance(self.shed, bool):
            raise TypeError(f"shed must be True or False, got {type(self.shed).__name__} {self.shed!r}")
        if self.shed and not self.adaptive:
            raise TypeError(
                "shed=True needs the adaptive policy (latency_target=): it sheds jobs predicted "
                "to miss the latency target (under policy='fixed', bound the backlog with max_pending=)"
            )


def check_option_names(owner: str, given: Iterable[str]) -> None:
    """A clear error for option names that are not options, with the closest one offered."""
    known = [f.name for f in fields(Options)]
    unknown = [name for name in given if name not in known]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TypeError(f"{owner}() got an unknown option {name!r}{hint} (the options are: {', '.join(known)})")


def check_processor_slot(batcher: str, queue: object, processor: object) -> None:
    """A clear error when the processor is missing, or was passed where the queue goes."""
    if processor is not None:
        return
    looks_like_processor = callable(queue) or callable(getattr(queue, "process_batch", None))
    looks_like_queue = callable(getattr(queue, "add", None)) or callable(getattr(queue, "claim", None))
    if queue is not None and looks_like_processor and not looks_like_queue:
        raise TypeError(
            f"{batcher}(queue, processor, ...) takes the queue first: {queue!r} was given as the queue "
            f"and no processor; write {batcher}(None, processor) (None: the in-memory queue) or processor=..."
        )
    raise TypeError(f"a processor is required: {batcher}(queue, processor, ...)")
