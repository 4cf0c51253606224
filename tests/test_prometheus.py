"""Prometheus export: conventional names, read at scrape time, registered only on request."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from conftest import double, vrun

from microbatching import AsyncMicroBatching, Job, MicroBatching, RetryPolicy

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="prometheus-client missing: pip install 'microbatching[prometheus]'"
)
from microbatching.metrics import prometheus  # noqa: E402


def _value(registry: Any, name: str, **labels: str) -> float | None:
    value: float | None = registry.get_sample_value(name, labels)
    return value


def _flaky(jobs: list[Job[int]]) -> list[Any]:
    return [ValueError("odd") if j.data % 2 else j.data for j in jobs]


def test_counters_gauges_and_histograms_after_a_run() -> None:
    registry = prometheus_client.CollectorRegistry()
    with MicroBatching(None, _flaky, batch_size=4, batch_interval=0.01, retry=None) as mb:
        prometheus.instrument(mb, registry, name="api")
        handles = [mb.submit_job(Job(i, i)) for i in range(10)]
        for handle in handles:
            handle.exception(timeout=5)
    assert _value(registry, "microbatching_jobs_submitted_total", batcher="api") == 10
    assert _value(registry, "microbatching_jobs_total", batcher="api", outcome="completed") == 5
    assert _value(registry, "microbatching_jobs_total", batcher="api", outcome="failed") == 5
    assert _value(registry, "microbatching_jobs_pending", batcher="api") == 0
    batches = sum(
        _value(registry, "microbatching_batches_total", batcher="api", trigger=t) or 0
        for t in ("size", "time", "weight", "shutdown")
    )
    assert batches >= 3
    assert _value(registry, "microbatching_batch_size_count", batcher="api") == batches
    assert _value(registry, "microbatching_batch_size_sum", batcher="api") == 10
    assert _value(registry, "microbatching_queue_wait_seconds_count", batcher="api") == 10
    assert _value(registry, "microbatching_batch_duration_seconds_count", batcher="api") == batches
    assert _value(registry, "microbatching_batch_size_bucket", batcher="api", le="+Inf") == batches
    assert _value(registry, "microbatching_batch_size_bucket", batcher="api", le="5.0") == batches


def test_retries_and_processor_errors_are_exported() -> None:
    calls = {"n": 0}

    async def fails_once(jobs: list[Job[int]]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("down")
        return [j.data for j in jobs]

    async def main() -> Any:
        registry = prometheus_client.CollectorRegistry()
        mb = AsyncMicroBatching(None, fails_once, batch_size=2, retry=RetryPolicy(base_delay=0.01))
        prometheus.instrument(mb, registry)
        await asyncio.gather(*(mb.submit_job_nowait(Job(i, i)) for i in range(2)))
        await mb.shutdown()
        return registry

    registry = vrun(main())
    assert _value(registry, "microbatching_processor_errors_total", batcher="default") == 1
    assert _value(registry, "microbatching_job_retries_total", batcher="default") == 2
    assert _value(registry, "microbatching_jobs_total", batcher="default", outcome="completed") == 2


def test_several_batchers_share_a_registry_by_name() -> None:
    async def main() -> None:
        registry = prometheus_client.CollectorRegistry()
        a = AsyncMicroBatching(None, double, batch_size=1)
        b = AsyncMicroBatching(None, double, batch_size=1)
        prometheus.instrument(a, registry, name="a")
        handle_b = prometheus.instrument(b, registry, name="b")
        with pytest.raises(ValueError, match="already exported"):
            prometheus.instrument(b, registry, name="a")
        await a.submit_job_nowait(Job(1, 1))
        assert _value(registry, "microbatching_jobs_submitted_total", batcher="a") == 1
        assert _value(registry, "microbatching_jobs_submitted_total", batcher="b") == 0
        handle_b.close()
        assert _value(registry, "microbatching_jobs_submitted_total", batcher="b") is None
        await a.shutdown()

    vrun(main())


def test_import_registers_nothing() -> None:
    code = (
        "import prometheus_client, microbatching.metrics.prometheus\n"
        "names = {m.name for m in prometheus_client.REGISTRY.collect()}\n"
        "print(any(n.startswith('microbatching') for n in names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_client_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import microbatching.metrics.prometheus\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'microbatching[prometheus]'" in out.stdout


def test_start_metrics_server_serves_a_scrape_on_loopback() -> None:
    with MicroBatching(None, lambda jobs: [j.data for j in jobs], batch_size=2) as mb:
        server = prometheus.start_metrics_server(mb, 0)
        try:
            assert server.url.startswith("http://127.0.0.1:")
            mb.submit_job(Job(1, "x")).result(timeout=5)
            with urllib.request.urlopen(server.url, timeout=5) as response:
                body = response.read().decode()
        finally:
            server.close()
    assert 'microbatching_jobs_total{batcher="worker",outcome="completed"} 1.0' in body
    assert "# TYPE microbatching_batch_duration_seconds histogram" in body


def test_serve_uses_a_free_port_and_closes() -> None:
    registry = prometheus_client.CollectorRegistry()
    server = prometheus.serve(0, registry=registry)
    assert server.port > 0
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.status == 200
    server.close()
    server.close()  # idempotent


def test_worker_serves_metrics_on_metrics_port(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import socket
    import time

    from microbatching.cli import main

    (tmp_path / "procs.py").write_text("def echo(jobs):\n    return [job.data for job in jobs]\n")
    monkeypatch.chdir(tmp_path)
    assert main(["enqueue", "1", "2", "3"]) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "microbatching", "worker", "procs:echo", "--batch-interval", "0.01",
         "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--quiet"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    body, deadline = "", time.monotonic() + 30
    try:
        while 'outcome="completed"} 3.0' not in body and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                continue
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert 'microbatching_jobs_total{batcher="worker",outcome="completed"} 3.0' in body, err.decode()
    assert process.returncode == 0, err.decode()
    assert os.path.exists(tmp_path / "microbatching.db")
