"""Logging: the ``microbatching`` logger, structured ``extra`` fields, quiet by default, no payloads."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import pytest
from conftest import vrun

from microbatching import AsyncMicroBatching, Job, MicroBatching, RetryPolicy

SECRET = "s3cr3t-payload-4412"


def _everything(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__} {r.exc_text or ''}" for r in records)


def test_debug_lines_per_batch_carry_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, lambda jobs: [j.data for j in jobs], batch_size=2)
        await asyncio.gather(*(mb.submit_job_nowait(Job(i, i)) for i in range(2)))
        await mb.shutdown()

    with caplog.at_level(logging.DEBUG, logger="microbatching"):
        vrun(main())
    (record,) = [r for r in caplog.records if r.name == "microbatching" and r.levelno == logging.DEBUG]
    assert record.batch_size == 2  # type: ignore[attr-defined]
    assert record.trigger == "size"  # type: ignore[attr-defined]
    assert record.error_type is None  # type: ignore[attr-defined]
    assert record.duration_s >= 0  # type: ignore[attr-defined]
    assert "batch" in record.getMessage() and "2 jobs" in record.getMessage()


def test_batch_timeouts_and_abandoned_jobs_are_warnings(caplog: pytest.LogCaptureFixture) -> None:
    async def hang(jobs: list[Job[Any]]) -> list[Any]:
        await asyncio.sleep(100)
        return [None] * len(jobs)

    async def main() -> None:
        mb = AsyncMicroBatching(None, hang, batch_size=1, batch_timeout=1.0, retry=None)
        with pytest.raises(Exception, match="batch_timeout"):
            await mb.submit_job_nowait(Job(1, SECRET))
        pending = mb.submit_job_nowait(Job(2, SECRET))
        await asyncio.sleep(0)
        await mb.shutdown(cancel=True)
        with pytest.raises(Exception, match="abandoned"):
            await pending

    with caplog.at_level(logging.DEBUG, logger="microbatching"):
        vrun(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    messages = [r.getMessage() for r in warnings]
    assert any("batch_timeout" in m for m in messages), messages
    abandoned = [r for r in warnings if hasattr(r, "abandoned_running")]
    assert abandoned and abandoned[0].abandoned_running == 1  # type: ignore[attr-defined]


def test_payloads_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"n": 0}

    def processor(jobs: list[Job[str]]) -> list[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("temporary")
        return [ValueError("rejected") if i == 0 else j.data for i, j in enumerate(jobs)]

    def raising_handler(*args: Any) -> None:
        raise KeyError("handler bug")

    with caplog.at_level(logging.DEBUG, logger="microbatching"):
        with MicroBatching(
            None,
            processor,
            batch_size=3,
            batch_interval=0.01,
            retry=RetryPolicy(max_attempts=2, base_delay=0.01),
        ) as mb:
            mb.on("job_completed", raising_handler)
            handles = [mb.submit_job(Job(i, f"{SECRET}-{i}")) for i in range(3)]
            for handle in handles:
                handle.exception(timeout=5)
        assert mb.stats().processor_errors == 1
    assert caplog.records, "expected per-batch debug lines and handler errors"
    assert any(r.levelno == logging.ERROR for r in caplog.records)  # the raising handler
    assert SECRET not in _everything(caplog.records)


def test_quiet_by_default() -> None:
    code = (
        "import logging, microbatching\n"
        "from microbatching import MicroBatching, Job\n"
        "assert logging.getLogger('microbatching').handlers == []\n"
        "with MicroBatching(None, lambda jobs: [j.data for j in jobs], batch_size=2) as mb:\n"
        "    print(mb.submit_job(Job(1, 'x')).result(timeout=5))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "x"
    assert out.stderr == ""
