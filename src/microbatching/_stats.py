"""The statistics snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Stats"]


@dataclass(frozen=True)
class Stats:
    """A snapshot of a batcher's counters, taken by ``stats()``.

    ``pending`` counts accepted jobs not yet final: ``buffered`` (waiting for a batch),
    ``in_flight`` (in a running batch), ``retrying`` (waiting out a retry delay), plus any
    held inside a user-supplied queue.
    """

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    processor_errors: int = 0
    pending: int = 0
    buffered: int = 0
    in_flight: int = 0
    retrying: int = 0
    batches: int = 0
    batches_by_trigger: dict[str, int] = field(default_factory=dict)
