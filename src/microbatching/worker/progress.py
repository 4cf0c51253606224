"""What the worker says: the live line on a terminal, log lines otherwise, and every failure.

On a terminal, one line on stderr is rewritten in place, fitted to the terminal's width;
elsewhere the same figures go out as a log line every ``--log-interval`` seconds.  Each
retry is logged at INFO, each failed batch at WARNING, each dead letter at ERROR with its
traceback (never the job's data).  Log records pass through a formatter that takes the
queue URL's secrets out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .._async import AsyncMicroBatching
from .._batch import Batch
from .._job import Job
from ..errors import BatchTimeoutError, JobCancelledError, JobFailedError
from ..queues._registry import scrub
from .common import plural

__all__ = ["FailureLog", "Progress", "Rate", "fit", "logging_to_stderr", "terminal_width"]

logger = logging.getLogger("microbatching.worker")

_LIVE_INTERVAL = 0.5  # seconds between redraws of the live line
_RATE_HALF_LIFE = 3.0  # seconds: the rate shown follows a change within a few seconds, not each batch


# -- logging -----------------------------------------------------------------------------------


class _ScrubbingFormatter(logging.Formatter):
    """Formats a record (traceback included), then takes the queue URL's secrets out."""

    def __init__(self, url: str) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._url = url

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record), self._url)


@contextlib.contextmanager
def logging_to_stderr(
    level: str, url: str, before_record: Callable[[], None] | None = None
) -> Iterator[None]:
    """Log to stderr while in the block: the library's records from ``level`` up, others' from WARNING.

    ``before_record`` runs before each record is written (the live line clears itself).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ScrubbingFormatter(url))
    if before_record is not None:
        handler.addFilter(lambda record: before_record() or True)
    root, library = logging.getLogger(), logging.getLogger("microbatching")
    levels = root.level, library.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    library.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        library.setLevel(levels[1])


class FailureLog:
    """Logs the batcher's failures as they happen and counts the dead letters."""

    def __init__(self, mb: AsyncMicroBatching, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self.dead = 0
        self._traced: tuple[BaseException, Any] | None = None  # the last error whose traceback was logged
        mb.on("job_retrying", self._retrying)
        mb.on("batch_failed", self._batch_failed)
        mb.on("job_failed", self._failed)

    def _retrying(self, job: Job[Any], error: BaseException, delay: float) -> None:
        logger.info(
            "job %r failed attempt %d of %d: %s; retrying in %.2f s",
            job.id, job.attempts, self.max_attempts, _one_line(error), delay,
        )  # fmt: skip

    def _batch_failed(self, batch: Batch, error: BaseException) -> None:
        if isinstance(error, (BatchTimeoutError, JobCancelledError)):
            return  # the batcher logs a timeout itself; a cancelled batch was given back
        logger.warning("batch %d of %s failed: %s", batch.id, plural(len(batch), "job"), _one_line(error))

    def _failed(self, job: Job[Any], error: BaseException) -> None:
        if isinstance(error, JobCancelledError):
            return  # given back to the queue, not failed
        self.dead += 1
        cause = error.cause if isinstance(error, JobFailedError) else error
        message = "job %r dead-lettered after %s: %s"
        args: tuple[Any, ...] = (job.id, plural(job.attempts, "attempt"), _one_line(cause))
        if self._traced is not None and self._traced[0] is cause:  # its batch-mate's, just above
            logger.error(message + " (the traceback of job %r above)", *args, self._traced[1])
            return
        trace = None if cause.__traceback__ is None else (type(cause), cause, cause.__traceback__)
        if trace is not None:
            self._traced = (cause, job.id)
        logger.error(message, *args, exc_info=trace)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- the figures -------------------------------------------------------------------------------


class Rate:
    """Jobs per second, exponentially weighted: a steady rate reads steady, whatever the batch size."""

    def __init__(self, half_life: float = _RATE_HALF_LIFE) -> None:
        self._half_life = half_life
        self._last: tuple[float, int] | None = None
        self._primed = False
        self.value = 0.0

    def update(self, now: float, total: int) -> float:
        """Take the running total of finished jobs at ``now``; returns the smoothed rate."""
        if self._last is None:
            self._last = (now, total)
            return self.value
        then, before = self._last
        elapsed = now - then
        if elapsed <= 0:
            return self.value
        instant = (total - before) / elapsed
        if self._primed:
            weight = 1.0 - 0.5 ** (elapsed / self._half_life)
            self.value += weight * (instant - self.value)
        else:
            self.value, self._primed = instant, True
        self._last = (now, total)
        return self.value


def fit(fields: list[str], width: int) -> str:
    """``fields`` joined by two spaces, dropping the last ones (then cutting) to stay under ``width``."""
    room = max(width - 1, 1)  # the last column would wrap on some terminals
    shown = list(fields)
    while len(shown) > 1 and len("  ".join(shown)) > room:
        shown.pop()
    return "  ".join(shown)[:room]


def terminal_width(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to (``COLUMNS`` wins; 80 when unknown)."""
    fallback = shutil.get_terminal_size()
    if "COLUMNS" in os.environ:
        return fallback.columns
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return fallback.columns


class Progress:
    """Live progress on a terminal (one rewritten line), plain log lines otherwise."""

    def __init__(self, mb: AsyncMicroBatching, stream: TextIO, log_interval: float, quiet: bool) -> None:
        self.mb, self.stream, self.quiet = mb, stream, quiet
        self.tty = stream.isatty()
        self.interval = _LIVE_INTERVAL if self.tty else log_interval
        self.batches = 0
        self.batched_jobs = 0
        #: Jobs ready in the queue (``None`` when the queue cannot tell), kept fresh by the worker.
        self.backlog: int | None = None
        self.started = time.monotonic()
        self.rate = Rate()
        self._shown = False
        mb.on("batch_started", self._batch_started)

    def _batch_started(self, batch: Batch) -> None:
        self.batches += 1
        self.batched_jobs += len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Report every interval until ``stop``."""
        if self.quiet:
            return
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                self.report()

    def fields(self, rate: float) -> list[str]:
        """The figures, most important first."""
        stats = self.mb.stats()
        mean = self.batched_jobs / self.batches if self.batches else 0.0
        fields = [f"done {stats.completed:,}", f"{rate:,.0f} jobs/s"]
        if self.backlog is not None:
            fields.append(f"backlog {self.backlog:,}")
        fields += [f"failed {stats.failed:,}", f"in flight {stats.in_flight:,}", f"retried {stats.retried:,}"]
        if stats.cancelled:  # abandoned by a drain timeout: given back to the queue, not failed
            fields.append(f"given back {stats.cancelled:,}")
        fields.append(f"batches {self.batches:,} (mean size {mean:.1f})")
        return fields

    def line(self) -> str:
        """The current figures, in one line (fitted to the terminal on a terminal)."""
        stats = self.mb.stats()
        rate = self.rate.update(time.monotonic(), stats.completed + stats.failed)
        fields = self.fields(rate)
        return fit(fields, terminal_width(self.stream)) if self.tty else "  ".join(fields)

    def report(self) -> None:
        """One progress update."""
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
            self._shown = True
        else:
            logger.info("%s", self.line())

    def clear(self) -> None:
        """Take the live line off the terminal (before a log record is written)."""
        if self._shown:
            self.stream.write("\r\033[K")
            self._shown = False

    def stopping(self) -> None:
        """End the live line before the shutdown messages."""
        self.clear()

    def final(self) -> None:
        """The summary line at exit: totals and the mean rate of the whole run."""
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        stats = self.mb.stats()
        self.backlog = None  # last seen before the drain: stale now
        mean_rate = (stats.completed + stats.failed) / elapsed if elapsed > 0 else 0.0
        logger.info(
            "worker %d stopped after %.1f s: %s", os.getpid(), elapsed, "  ".join(self.fields(mean_rate))
        )
