"""OpenTelemetry: a CONSUMER span per batch linked to the submitters' spans, metrics, no-op without SDK."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from conftest import vrun

from microbatching import AsyncMicroBatching, Job, MicroBatching

pytest.importorskip(
    "opentelemetry.trace", reason="opentelemetry-api missing: pip install 'microbatching[otel]'"
)
sdk_trace = pytest.importorskip(
    "opentelemetry.sdk.trace",
    reason="opentelemetry-sdk missing (a test dependency: pip install -e '.[test]')",
)
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from microbatching.metrics import otel  # noqa: E402

SECRET = "payload-7f3a-do-not-export"


def _providers() -> tuple[Any, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]:
    exporter = InMemorySpanExporter()
    tracer_provider = sdk_trace.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, exporter, MeterProvider(metric_readers=[reader]), reader


def _metrics(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def test_a_span_per_batch_links_the_submitters_and_parents_the_processor() -> None:
    tracer_provider, exporter, meter_provider, reader = _providers()
    tracer = tracer_provider.get_tracer("test")
    inner_parents: list[Any] = []

    async def process(jobs: list[Job[str]]) -> list[Any]:
        with tracer.start_as_current_span("db write") as inner:
            inner_parents.append(inner.parent)
        return [ValueError("bad") if j.data == "bad" else len(j.data) for j in jobs]

    async def main() -> None:
        mb = AsyncMicroBatching(None, process, batch_size=3, batch_interval=0.1, retry=None)
        otel.instrument(mb, name="orders", tracer_provider=tracer_provider, meter_provider=meter_provider)
        futures = []
        for data in ("a", SECRET, "bad"):
            with tracer.start_as_current_span(f"request {data[:3]}"):
                futures.append(mb.submit_job_nowait(Job(None, data)))
        await asyncio.gather(*futures, return_exceptions=True)
        await mb.shutdown()

    vrun(main())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    batch_span = spans["process orders"]
    assert batch_span.kind is trace.SpanKind.CONSUMER
    attrs = dict(batch_span.attributes)
    assert attrs["messaging.system"] == "microbatching"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == "orders"
    assert attrs["messaging.batch.message_count"] == 3
    assert attrs["microbatching.batch.failed_jobs"] == 1
    assert attrs["microbatching.batch.trigger"] == "size"
    submitters = {spans[name].context.span_id for name in spans if name.startswith("request")}
    assert {link.context.span_id for link in batch_span.links} == submitters
    assert inner_parents[0].span_id == batch_span.context.span_id
    for span in exporter.get_finished_spans():
        assert SECRET not in str(span.attributes) and SECRET not in str(span.events)

    points = _metrics(reader)
    assert points["messaging.process.duration"][0].count == 1
    assert points["microbatching.batch.size"][0].sum == 3
    assert points["microbatching.batch.queue_wait"][0].count == 1
    outcomes = {p.attributes["microbatching.job.outcome"]: p.value for p in points["microbatching.jobs"]}
    assert outcomes == {"completed": 2, "failed": 1, "cancelled": 0}
    assert points["microbatching.jobs.pending"][0].value == 0


def test_a_failed_batch_marks_its_span_as_error_without_the_message() -> None:
    tracer_provider, exporter, meter_provider, _ = _providers()

    def process(jobs: list[Job[str]]) -> list[Any]:
        raise RuntimeError(f"could not write {jobs[0].data}")

    with MicroBatching(None, process, batch_size=1, retry=None) as mb:
        otel.instrument(mb, tracer_provider=tracer_provider, meter_provider=meter_provider)
        assert mb.submit_job(Job(1, SECRET)).exception(timeout=5) is not None
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.attributes["microbatching.batch.failed_jobs"] == 1
    assert SECRET not in str(span.to_json())


def test_sync_submitters_are_linked_from_their_own_thread() -> None:
    tracer_provider, exporter, meter_provider, _ = _providers()
    tracer = tracer_provider.get_tracer("test")
    with MicroBatching(None, lambda jobs: [j.data for j in jobs], batch_size=2, batch_interval=5) as mb:
        otel.instrument(mb, tracer_provider=tracer_provider, meter_provider=meter_provider)
        with tracer.start_as_current_span("caller") as caller:
            handles = [mb.submit_job(Job(i, i)) for i in range(2)]
        assert [h.result(timeout=5) for h in handles] == [0, 1]
    batch_span = next(s for s in exporter.get_finished_spans() if s.name == "process microbatching")
    assert [link.context.span_id for link in batch_span.links] == [caller.get_span_context().span_id] * 2


def test_close_stops_tracing_and_forgets_contexts() -> None:
    tracer_provider, exporter, meter_provider, _ = _providers()

    async def main() -> None:
        mb = AsyncMicroBatching(None, lambda jobs: [1] * len(jobs), batch_size=1)
        handle = otel.instrument(mb, tracer_provider=tracer_provider, meter_provider=meter_provider)
        handle.close()
        handle.close()
        assert mb._prepare is None
        await mb.submit_job_nowait(Job(1, 1))
        await mb.shutdown()

    vrun(main())
    assert exporter.get_finished_spans() == ()


def test_without_an_sdk_it_is_a_no_op() -> None:
    code = (
        "import asyncio\n"
        "from microbatching import AsyncMicroBatching, Job\n"
        "from microbatching.metrics import otel\n"
        "async def main():\n"
        "    mb = AsyncMicroBatching(None, lambda jobs: [j.data for j in jobs], batch_size=2)\n"
        "    otel.instrument(mb)\n"
        "    print(await asyncio.gather(*(mb.submit_job_nowait(Job(i, i)) for i in range(4))))\n"
        "    await mb.shutdown()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[0, 1, 2, 3]"
    assert out.stderr == ""


def test_missing_api_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import microbatching.metrics.otel\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'microbatching[otel]'" in out.stdout
