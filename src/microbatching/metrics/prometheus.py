"""Prometheus metrics for a batcher: ``instrument(batcher)``, then scrape.

Counters and gauges are read from :meth:`~microbatching.MicroBatching.stats` at scrape
time, so instrumenting adds no work per job; the three histograms are cumulative bucket
counts the batcher keeps once per batch from the moment it is instrumented.  Every series
carries a ``batcher`` label (``name=``), so several batchers can share one registry.

Exported (with ``microbatching_`` prefix): ``jobs_submitted_total``,
``jobs_total{outcome="completed|failed|cancelled"}``, ``job_retries_total``,
``batches_total{trigger="size|time|weight|shutdown"}``, ``processor_errors_total``,
the gauges ``jobs_pending``, ``jobs_buffered``, ``jobs_in_flight``, ``jobs_retrying``,
and the histograms ``batch_size`` (jobs), ``queue_wait_seconds`` (per job, estimated from
up to five sampled jobs per batch) and ``batch_duration_seconds``.

Needs ``pip install 'microbatching[prometheus]'``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .._stats import Histogram, Histograms, Stats
from . import require

_client: Any = require("prometheus_client", "prometheus")
_core: Any = require("prometheus_client.core", "prometheus")
_utils: Any = require("prometheus_client.utils", "prometheus")

__all__ = [
    "Instrumentation",
    "MetricsServer",
    "instrument",
    "serve",
    "start_metrics_server",
]


class _Batcher(Protocol):
    def stats(self) -> Stats: ...


class Instrumentation:
    """One batcher exported to one registry; ``close()`` stops exporting it."""

    def __init__(self, collector: _BatcherCollector, name: str) -> None:
        self._collector = collector
        self.name = name

    def close(self) -> None:
        """Remove this batcher's series from the registry (idempotent)."""
        self._collector.remove(self.name)


class _BatcherCollector:
    """Collects every instrumented batcher of one registry (one collector per registry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batchers: dict[str, tuple[_Batcher, Histograms]] = {}

    def add(self, name: str, batcher: _Batcher, histograms: Histograms) -> None:
        with self._lock:
            if name in self._batchers:
                raise ValueError(
                    f"a batcher named {name!r} is already exported to this registry; pass name=..."
                )
            self._batchers[name] = (batcher, histograms)

    def remove(self, name: str) -> None:
        with self._lock:
            self._batchers.pop(name, None)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            batchers = list(self._batchers.items())
        families = _Families()
        for name, (batcher, histograms) in batchers:
            families.add(name, batcher.stats(), histograms)
        yield from families.all()


class _Families:
    """The metric families of one scrape, filled batcher by batcher."""

    def __init__(self) -> None:
        c, g, h = _core.CounterMetricFamily, _core.GaugeMetricFamily, _core.HistogramMetricFamily
        self.submitted = c(
            "microbatching_jobs_submitted", "Jobs accepted by the batcher.", labels=["batcher"]
        )
        self.jobs = c(
            "microbatching_jobs", "Jobs that reached a final outcome.", labels=["batcher", "outcome"]
        )
        self.retries = c(
            "microbatching_job_retries", "Retries scheduled after a failure.", labels=["batcher"]
        )
        self.batches = c(
            "microbatching_batches", "Batches dispatched, by trigger.", labels=["batcher", "trigger"]
        )
        self.errors = c(
            "microbatching_processor_errors",
            "Batches whose processor raised, timed out or returned the wrong number of results.",
            labels=["batcher"],
        )
        self.gauges = {
            field: g(f"microbatching_jobs_{field}", doc, labels=["batcher"])
            for field, doc in (
                ("pending", "Accepted jobs not yet final."),
                ("buffered", "Jobs waiting for a batch."),
                ("in_flight", "Jobs in a running batch."),
                ("retrying", "Jobs waiting out a retry delay."),
            )
        }
        self.size = h("microbatching_batch_size", "Jobs per batch.", labels=["batcher"])
        self.wait = h(
            "microbatching_queue_wait_seconds",
            "Seconds from a job being ready to the start of its batch (estimated per batch).",
            labels=["batcher"],
        )
        self.duration = h(
            "microbatching_batch_duration_seconds",
            "Seconds the processor took per batch.",
            labels=["batcher"],
        )

    def add(self, name: str, stats: Stats, histograms: Histograms) -> None:
        self.submitted.add_metric([name], stats.submitted)
        for outcome in ("completed", "failed", "cancelled"):
            self.jobs.add_metric([name, outcome], getattr(stats, outcome))
        self.retries.add_metric([name], stats.retried)
        for trigger, count in stats.batches_by_trigger.items():
            self.batches.add_metric([name, trigger], count)
        self.errors.add_metric([name], stats.processor_errors)
        for field, family in self.gauges.items():
            family.add_metric([name], getattr(stats, field))
        _add_histogram(self.size, name, histograms.batch_size)
        _add_histogram(self.wait, name, histograms.queue_wait)
        _add_histogram(self.duration, name, histograms.processing_time)

    def all(self) -> list[Any]:
        return [
            self.submitted, self.jobs, self.retries, self.batches, self.errors,
            *self.gauges.values(), self.size, self.wait, self.duration,
        ]  # fmt: skip


def _add_histogram(family: Any, name: str, histogram: Histogram) -> None:
    total = histogram.sum
    buckets = [(_utils.floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    family.add_metric([name], buckets, total)


_collectors: weakref.WeakKeyDictionary[Any, _BatcherCollector] = weakref.WeakKeyDictionary()
_collectors_lock = threading.Lock()


def instrument(batcher: Any, registry: Any = None, *, name: str = "default") -> Instrumentation:
    """Export ``batcher``'s statistics to ``registry`` (the default ``prometheus_client.REGISTRY``).

    Works for :class:`~microbatching.MicroBatching` and
    :class:`~microbatching.AsyncMicroBatching`.  ``name`` becomes the ``batcher`` label and
    must be unique within a registry.  Returns an :class:`Instrumentation` whose ``close()``
    stops exporting.  Nothing is registered until you call this.
    """
    registry = _client.REGISTRY if registry is None else registry
    histograms = batcher._recorder.enable_histograms()
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _BatcherCollector()
            registry.register(collector)
            _collectors[registry] = collector
    collector.add(name, batcher, histograms)
    return Instrumentation(collector, name)


class MetricsServer:
    """A running ``/metrics`` HTTP server (a daemon thread); ``close()`` stops it."""

    def __init__(
        self, server: Any, thread: threading.Thread, on_close: Callable[[], None] | None = None
    ) -> None:
        self._server = server
        self._thread = thread
        self._on_close = on_close
        self.port: int = server.server_port
        self.url = f"http://{server.server_address[0]}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def serve(port: int, addr: str = "127.0.0.1", registry: Any = None) -> MetricsServer:
    """Serve ``registry`` (default ``prometheus_client.REGISTRY``) at ``http://addr:port/metrics``.

    ``port=0`` picks a free port: read it from the returned server's ``port``.
    """
    registry = _client.REGISTRY if registry is None else registry
    server, thread = _client.start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server, thread)


def start_metrics_server(
    batcher: Any, port: int, addr: str = "127.0.0.1", *, name: str = "worker"
) -> MetricsServer:
    """Export ``batcher`` on a fresh registry and serve it at ``http://addr:port/metrics``.

    What the worker's ``--metrics-port``/``--metrics-addr`` run.  ``addr`` defaults to the
    loopback interface (this machine only); ``"0.0.0.0"`` serves every interface.
    ``port=0`` picks a free port (see ``MetricsServer.port``).  Close the server at exit.
    """
    registry = _client.CollectorRegistry()
    handle = instrument(batcher, registry, name=name)
    try:
        server, thread = _client.start_http_server(port, addr=addr, registry=registry)
    except BaseException:
        handle.close()
        raise
    return MetricsServer(server, thread, on_close=handle.close)
