"""Helpers for the fault tests: enqueue, run workers as real processes, read the effects.

A run works on one queue URL (any bundled durable queue, see tests/backends.py).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from microbatching import Job
from microbatching.queues import open_queue

HERE = Path(__file__).parent
FIGURES = Path(os.environ.get("MICROBATCHING_FAULT_FIGURES", "/tmp/microbatching-fault-figures.jsonl"))


@dataclass
class FaultRun:
    """One fault scenario: a queue, a log directory, and the figures it produced."""

    tmp: Path
    name: str
    url: str
    env: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def enqueue(self, ids: range) -> None:
        async def main() -> None:
            queue = open_queue(self.url)
            try:
                messages = [queue.encode(Job(i, i)) for i in ids]
                for start in range(0, len(messages), 1000):
                    await queue.enqueue(messages[start : start + 1000])
            finally:
                await queue.close()

        asyncio.run(main())

    def worker(self, *options: str, **env: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "microbatching", "worker", "fault_processors:record", "--queue",
                   self.url, "--quiet", *options]
        environ = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   "FAULT_LOG_DIR": str(self.tmp), **self.env, **env}
        return subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def effects(self) -> list[tuple[int, int, float]]:
        rows = []
        for path in self.tmp.glob("effects-*.log"):
            for line in path.read_text().splitlines():
                job_id, attempts, at = line.split()
                rows.append((int(job_id), int(attempts), float(at)))
        return rows

    def effect_count(self) -> int:
        return sum(path.stat().st_size for path in self.tmp.glob("effects-*.log"))

    def counts(self) -> collections.Counter[int]:
        return collections.Counter(job_id for job_id, _, _ in self.effects())

    def stats(self) -> Any:
        async def main() -> Any:
            queue = open_queue(self.url)
            try:
                return await queue.stats(), await queue.dead_letters(10_000)
            finally:
                await queue.close()

        return asyncio.run(main())

    def drop(self) -> None:
        """Delete the queue and everything it created."""

        async def main() -> None:
            queue = open_queue(self.url)
            try:
                await queue.drop()
            finally:
                await queue.close()

        asyncio.run(main())

    def report(self, **figures: Any) -> None:
        """Print the figures (visible with -s) and append them to FIGURES for quoting."""
        seconds = round(time.monotonic() - self.started, 2)
        figures = {"test": self.name, "queue": self.url.partition(":")[0], **figures, "seconds": seconds}
        line = json.dumps(figures)
        print(f"\nFAULT FIGURES {line}")
        with FIGURES.open("a") as out:
            out.write(line + "\n")


def known(in_flight: int | None) -> int:
    """An in-flight count; unknown (``None``: the broker does not count held deliveries) as 0.

    ``stats.done`` may be unknown the same way; the effects logs count what was done.
    """
    return 0 if in_flight is None else in_flight


def finish(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """Wait for a worker; on timeout kill it and fail, showing its stderr."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"worker did not exit within {timeout}s; stderr:\n{err.decode()[-3000:]}")
    assert process.stderr is not None and process.stdout is not None
    process.stdout.close()
    process.stderr.close()
    return process.returncode
