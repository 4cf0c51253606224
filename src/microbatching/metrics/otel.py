"""OpenTelemetry for a batcher: a span per batch linked to its jobs' submitters, and metrics.

``instrument(batcher)`` uses only ``opentelemetry-api``: with no SDK configured every call
is a no-op.  What it adds:

* At submit, the submitter's current span context is remembered (only for instrumented
  batchers; uninstrumented ones pay nothing).
* A ``CONSUMER`` span ``process <name>`` per batch, following the messaging semantic
  conventions: ``messaging.system="microbatching"``, ``messaging.operation.type`` and
  ``.name`` ``"process"``, ``messaging.destination.name=<name>``,
  ``messaging.batch.message_count``; one link per job whose submitter had a span; status
  ERROR with ``error.type`` when the whole batch failed; ``microbatching.batch.failed_jobs``
  for per-job failures.  The span is current while an ``async def`` processor runs, so its
  own spans become children (sync processors run in a worker thread, outside it).
  Neither job data nor exception messages are recorded: they may hold payloads.
* Metrics: histograms ``messaging.process.duration`` (s, per batch),
  ``microbatching.batch.size`` (jobs) and ``microbatching.batch.queue_wait`` (s, the oldest
  job's wait, per batch); counters read from ``stats()`` at collection time:
  ``microbatching.jobs`` (by ``microbatching.job.outcome``), ``microbatching.batches`` (by
  ``microbatching.batch.trigger``) and the up-down counter ``microbatching.jobs.pending``.

Needs ``pip install 'microbatching[otel]'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import __version__
from .._batch import Batch
from .._job import Job
from .._stats import BatchRecord
from . import require

require("opentelemetry.trace", "otel")
from opentelemetry import context as otel_context  # noqa: E402
from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.metrics import CallbackOptions, Observation  # noqa: E402

__all__ = ["OtelInstrumentation", "instrument"]

#: Submitter contexts kept for jobs not yet final; beyond this the oldest are dropped
#: (a safety bound: jobs refused at submit never reach a final event).
MAX_REMEMBERED = 100_000
_SYSTEM = "microbatching"


class OtelInstrumentation:
    """Traces and metrics for one batcher; ``close()`` stops them."""

    def __init__(self, batcher: Any, name: str, tracer_provider: Any, meter_provider: Any) -> None:
        self._batcher = batcher
        self.name = name
        self._tracer = trace.get_tracer("microbatching", __version__, tracer_provider)
        self._contexts: dict[Job[Any], trace.SpanContext] = {}
        self._spans: dict[Batch, tuple[trace.Span, object]] = {}
        self._closed = False
        self._base = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": name,
        }
        self._make_metrics(metrics.get_meter("microbatching", __version__, meter_provider))
        self._previous_prepare = batcher._prepare
        batcher._prepare = self._capture if self._previous_prepare is None else self._capture_after_prepare
        self._listeners = {
            "batch_started": self._batch_started,
            "batch_completed": self._batch_completed,
            "batch_failed": self._batch_failed,
            "job_completed": self._job_final,
            "job_failed": self._job_final,
        }
        for event, handler in self._listeners.items():
            batcher.on(event, handler)
        batcher._recorder.subscribe(self._record)

    # -- submit: remember the submitter's span ---------------------------------------------

    def _capture(self, job: Job[Any]) -> None:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            contexts = self._contexts
            contexts[job] = span_context
            if len(contexts) > MAX_REMEMBERED:
                try:
                    del contexts[next(iter(contexts))]
                except (KeyError, RuntimeError, StopIteration):  # raced with another thread
                    pass

    def _capture_after_prepare(self, job: Job[Any]) -> None:
        self._previous_prepare(job)
        self._capture(job)

    def _job_final(self, job: Job[Any], _outcome: object) -> None:
        self._contexts.pop(job, None)

    # -- a span per batch --------------------------------------------------------------------

    def _batch_started(self, batch: Batch) -> None:
        contexts = self._contexts
        links = [trace.Link(ctx) for job in batch.jobs if (ctx := contexts.get(job)) is not None]
        attributes: dict[str, Any] = {
            **self._base,
            "messaging.batch.message_count": len(batch.jobs),
            "microbatching.batch.id": batch.id,
            "microbatching.batch.trigger": batch.trigger,
        }
        span = self._tracer.start_span(
            f"process {self.name}", kind=trace.SpanKind.CONSUMER, links=links, attributes=attributes
        )
        # Current for the rest of this batch's task: an async processor's spans are its children.
        token = otel_context.attach(trace.set_span_in_context(span))
        self._spans[batch] = (span, token)

    def _batch_completed(self, batch: Batch, results: Any) -> None:
        failed = sum(isinstance(result, Exception) for result in results)
        self._end(batch, failed, None)

    def _batch_failed(self, batch: Batch, error: BaseException) -> None:
        self._end(batch, len(batch.jobs), error)

    def _end(self, batch: Batch, failed: int, error: BaseException | None) -> None:
        entry = self._spans.pop(batch, None)
        if entry is None:
            return
        span, token = entry
        span.set_attribute("microbatching.batch.failed_jobs", failed)
        if error is not None:
            span.set_attribute("error.type", _error_type(error))
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    # -- metrics -------------------------------------------------------------------------------

    def _make_metrics(self, meter: metrics.Meter) -> None:
        self._duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Duration of processing a batch."
        )
        self._size = meter.create_histogram(
            "microbatching.batch.size", unit="{job}", description="Jobs per batch."
        )
        self._wait = meter.create_histogram(
            "microbatching.batch.queue_wait",
            unit="s",
            description="How long each batch's oldest job waited between being ready and the batch's start.",
        )
        meter.create_observable_counter(
            "microbatching.jobs",
            [self._observe_jobs],
            unit="{job}",
            description="Jobs that reached a final outcome.",
        )
        meter.create_observable_counter(
            "microbatching.batches",
            [self._observe_batches],
            unit="{batch}",
            description="Batches dispatched.",
        )
        meter.create_observable_up_down_counter(
            "microbatching.jobs.pending",
            [self._observe_pending],
            unit="{job}",
            description="Accepted jobs not yet final.",
        )

    def _record(self, record: BatchRecord) -> None:
        attributes: dict[str, Any] = dict(self._base)
        if record.error is not None:
            attributes["error.type"] = _error_type(record.error)
        self._duration.record(record.duration, attributes)
        self._size.record(record.size, self._base)
        self._wait.record(max(record.waits), self._base)

    def _observe_jobs(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed:
            return []
        stats = self._batcher.stats()
        return [
            Observation(getattr(stats, outcome), {**self._base, "microbatching.job.outcome": outcome})
            for outcome in ("completed", "failed", "cancelled")
        ]

    def _observe_batches(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed:
            return []
        triggers = self._batcher.stats().batches_by_trigger
        return [
            Observation(count, {**self._base, "microbatching.batch.trigger": trigger})
            for trigger, count in triggers.items()
        ]

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed:
            return []
        return [Observation(self._batcher.stats().pending, self._base)]

    def close(self) -> None:
        """Stop tracing and recording this batcher (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for event, handler in self._listeners.items():
            self._batcher.off(event, handler)
        self._batcher._recorder.unsubscribe(self._record)
        if self._batcher._prepare in (self._capture, self._capture_after_prepare):
            self._batcher._prepare = self._previous_prepare
        self._contexts.clear()


def _error_type(error: BaseException) -> str:
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def instrument(
    batcher: Any, *, name: str = "microbatching", tracer_provider: Any = None, meter_provider: Any = None
) -> OtelInstrumentation:
    """Trace and measure ``batcher`` with OpenTelemetry; returns a handle whose ``close()`` stops it.

    ``name`` is the ``messaging.destination.name`` (say, what the batcher writes to).  The
    providers default to the global ones: without an SDK configured, everything is a no-op.
    """
    return OtelInstrumentation(batcher, name, tracer_provider, meter_provider)
