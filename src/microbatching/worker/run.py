"""``microbatching worker``: process a durable queue until told to stop, then drain.

Before anything is claimed, the worker imports the processor, checks the queue is one
(a path that is not a queue is a usage error, exit 2) and binds the metrics port.  SIGTERM
or SIGINT: claim no more, finish what is held, exit 0; with ``--drain-timeout``, jobs
still unfinished by then are given back to the queue (exit 3) -- the worker waits for no
processor thread, so a stuck one cannot keep it alive.  A second SIGINT exits at once (130).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
import traceback
from dataclasses import replace
from typing import Any

from .._async import AsyncMicroBatching
from .._retry import RetryPolicy
from ..queues import ClaimQueue, QueueStats, WorkerInfo, redact
from .common import (
    EXIT_DEAD_LETTERS,
    EXIT_DRAIN_TIMEOUT,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    open_queue,
    plural,
)
from .progress import FailureLog, Progress, logging_to_stderr

__all__ = ["load_processor", "run_worker"]

logger = logging.getLogger("microbatching.worker")
_MISSING = object()
_HEARTBEAT = 5.0  # seconds between heartbeats, on queues that track workers
_POLL_UNTIL_EMPTY = 0.25  # seconds between looks at the queue with --until-empty
_POLL = 1.0  # ... and otherwise (the backlog in the progress line)


def run_worker(args: argparse.Namespace) -> int:
    """``microbatching worker``: process the queue until told to stop; returns the exit code."""
    processor = load_processor(args.processor)
    metrics = _metrics_module(args.metrics_port)
    queue = open_queue(args.queue, args.serializer, lease=args.lease)
    worker = Worker(args, processor, queue, metrics)
    level = "WARNING" if args.quiet else args.log_level or "INFO"
    with logging_to_stderr(level, args.queue, before_record=worker.clear_live_line):
        try:
            return asyncio.run(worker.run())
        except Exception:
            if not worker.started:  # the queue or the metrics port refused: one line, from the caller
                raise
            logger.exception("worker failed")
            return EXIT_ERROR


# -- the processor -----------------------------------------------------------------------------


def load_processor(spec: str) -> object:
    """Import ``package.module:attribute`` (a class is instantiated without arguments)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"processor must look like package.module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules in the working directory
    target: Any = _import(module_name)
    for name in attribute.split("."):
        target = getattr(target, name, _MISSING)
        if target is _MISSING:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}")
    if isinstance(target, type):
        target = _instantiate(target, spec)
    if not callable(target) and not callable(getattr(target, "process_batch", None)):
        raise UsageError(f"{spec} is neither callable nor has a process_batch(jobs) method")
    return target


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} for the processor: {exc}") from None
    except SyntaxError as exc:
        raise UsageError(
            f"cannot import {module_name!r} for the processor: {type(exc).__name__} in "
            f"{exc.filename}, line {exc.lineno}: {exc.msg}"
        ) from None
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} for the processor {_raised(exc)}") from None


def _instantiate(cls: type, spec: str) -> object:
    try:
        return cls()
    except Exception as exc:
        raise UsageError(f"creating the processor {spec}() {_raised(exc)}") from None


def _raised(error: BaseException) -> str:
    """``raised ValueError: boom (procs.py, line 3)``: the error and where it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"raised {type(error).__name__}: {error}{where}"


# -- the metrics server ------------------------------------------------------------------------


def _metrics_module(port: int | None) -> Any:
    """The Prometheus exporter when ``--metrics-port`` is given (imported up front: a missing extra
    is a usage error before anything is claimed)."""
    if port is None:
        return None
    try:
        from ..metrics import prometheus
    except ImportError as exc:  # the message names the extra to install
        raise UsageError(f"--metrics-port: {exc}") from None
    return prometheus


def _serve_metrics(metrics: Any, mb: AsyncMicroBatching, port: int, addr: str) -> Any:
    try:
        server = metrics.start_metrics_server(mb, port, addr)
    except OSError as exc:
        raise UsageError(f"--metrics-port {port}: cannot listen on {addr}: {exc.strerror or exc}") from None
    logger.info("metrics at %s", server.url)
    return server


# -- the worker --------------------------------------------------------------------------------


class Worker:
    """One run of ``microbatching worker``: check, start, watch, drain, and the exit code."""

    def __init__(self, args: argparse.Namespace, processor: object, queue: ClaimQueue, metrics: Any) -> None:
        self.args, self.processor, self.queue, self.metrics = args, processor, queue, metrics
        self.progress: Progress | None = None
        #: Whether jobs may have been claimed (before that, an error is one line and nothing ran).
        self.started = False
        self.info = WorkerInfo(
            id=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
            host=socket.gethostname(), pid=os.getpid(), processor=args.processor,
            started_at=time.time(), last_seen=time.time(),
        )  # fmt: skip

    def clear_live_line(self) -> None:
        """A log record is about to be written: it starts on a clean line."""
        if self.progress is not None:
            self.progress.clear()

    async def run(self) -> int:
        """Work until SIGTERM/SIGINT (or an empty queue with ``--until-empty``); the exit code."""
        stop = asyncio.Event()
        _install_signal_handlers(stop)  # first: a SIGTERM while starting up is a clean stop too
        await self._check_queue()
        mb = self._batcher()
        failures = FailureLog(mb, self.args.max_attempts)
        progress = self.progress = Progress(mb, sys.stderr, self.args.log_interval, quiet=self.args.quiet)
        server = await self._metrics_server(mb)
        try:
            gave_back = await self._work(stop, mb, progress)
        finally:
            if server is not None:
                server.close()
        progress.final()
        return self._exit_code(gave_back, mb.stats().cancelled, failures.dead)

    async def _metrics_server(self, mb: AsyncMicroBatching) -> Any:
        """With ``--metrics-port``, the running server (bound before anything is claimed)."""
        if self.metrics is None:
            return None
        try:
            return _serve_metrics(self.metrics, mb, self.args.metrics_port, self.args.metrics_addr)
        except BaseException:
            await self.queue.close()  # the batcher never started: it will not close it
            raise

    async def _work(self, stop: asyncio.Event, mb: AsyncMicroBatching, progress: Progress) -> bool:
        if stop.is_set():  # told to stop before anything was claimed
            await self.queue.close()
            return False
        self.started = True
        mb.start()
        self._log_start()
        return await self._work_until(stop, mb, progress)

    async def _check_queue(self) -> None:
        """A queue that is not one is a usage error, before anything starts; an empty one is said."""
        try:
            stats = await self.queue.stats()
        except BaseException:
            await self.queue.close()
            raise
        if stats.empty and not self.args.until_empty:
            logger.info("%s is empty: waiting for jobs", redact(self.args.queue))

    def _batcher(self) -> AsyncMicroBatching:
        args = self.args
        retry = RetryPolicy(
            max_attempts=args.max_attempts,
            base_delay=args.retry_delay,
            max_delay=max(args.max_retry_delay, args.retry_delay),
        )
        return AsyncMicroBatching(
            self.queue,
            self.processor,
            batch_size=args.batch_size,
            batch_interval=args.batch_interval,
            max_concurrent_batches=args.concurrency,
            retry=retry,
            batch_timeout=args.batch_timeout,
            latency_target=args.latency_target,
            objective=args.objective,
        )

    def _log_start(self) -> None:
        args = self.args
        logger.info(
            "worker %d started: %s on %s, batch_size=%d, batch_interval=%ss, concurrency=%d, "
            "max_attempts=%d, lease=%ss",
            os.getpid(), args.processor, redact(args.queue), args.batch_size, args.batch_interval,
            args.concurrency, args.max_attempts, self.queue.lease,
        )  # fmt: skip

    async def _work_until(self, stop: asyncio.Event, mb: AsyncMicroBatching, progress: Progress) -> bool:
        """Run until ``stop``, then drain; whether unfinished jobs were given back."""
        watch = QueueWatch(self, mb, progress, stop)
        tasks = [asyncio.ensure_future(progress.run(stop)), asyncio.ensure_future(watch.run())]
        try:
            await stop.wait()
        finally:
            stop.set()
            progress.stopping()
            await asyncio.gather(*tasks, return_exceptions=True)
            gave_back = await _drain(mb, self.args.drain_timeout)
            await watch.close()
        return gave_back

    def _exit_code(self, gave_back: bool, given_back: int, dead: int) -> int:
        args = self.args
        if gave_back:
            what = plural(given_back, "unfinished job was", "unfinished jobs were")
            logger.warning(
                "drain timeout (%ss) ran out: %s given back to the queue",
                args.drain_timeout, what if given_back else "unfinished jobs were",
            )  # fmt: skip
            return EXIT_DRAIN_TIMEOUT
        if args.until_empty and dead:
            logger.warning(
                "%s dead-lettered in this run (see: microbatching dead-letters list --queue %s)",
                plural(dead, "job was", "jobs were"), redact(args.queue),
            )  # fmt: skip
            return EXIT_DEAD_LETTERS
        return EXIT_OK


async def _drain(mb: AsyncMicroBatching, timeout: float | None) -> bool:
    """Shut down, finishing what is held; after ``timeout``, give the rest back. Whether it did."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    await mb.shutdown(timeout=timeout)
    # shutdown() returns before the timeout unless it ran out (then it gave the rest back).
    return timeout is not None and loop.time() - began >= timeout


class QueueWatch:
    """A second handle on the queue: the backlog for the progress line, ``--until-empty``, heartbeats."""

    def __init__(
        self, worker: Worker, mb: AsyncMicroBatching, progress: Progress, stop: asyncio.Event
    ) -> None:
        args = worker.args
        self.worker, self.mb, self.progress, self.stop = worker, mb, progress, stop
        self.until_empty = bool(args.until_empty)
        self.queue = open_queue(args.queue, args.serializer)
        self._next_heartbeat = 0.0

    async def run(self) -> None:
        """Look at the queue every poll until ``stop`` (a failed look is logged, not fatal)."""
        poll = _POLL_UNTIL_EMPTY if self.until_empty else _POLL
        failing = False
        while not self.stop.is_set():
            try:
                await self._look()
            except Exception as exc:
                if not failing:  # once, not at every poll
                    logger.warning("reading the queue's figures failed (retrying): %s", exc)
                failing = True
            else:
                failing = False
            try:
                await asyncio.wait_for(self.stop.wait(), poll)
            except asyncio.TimeoutError:
                pass

    async def _look(self) -> None:
        stats = await self.queue.stats()
        self.progress.backlog = stats.pending
        if self.until_empty and self._empty(stats):
            logger.info("%s is empty: stopping (--until-empty)", redact(self.worker.args.queue))
            self.stop.set()
        if time.monotonic() >= self._next_heartbeat:
            self._next_heartbeat = time.monotonic() + _HEARTBEAT
            await self._heartbeat()

    def _empty(self, stats: QueueStats) -> bool:
        return stats.empty and self.mb.stats().pending == 0

    async def _heartbeat(self) -> None:
        stats = self.mb.stats()
        beat = replace(self.worker.info, last_seen=time.time(), done=stats.completed, failed=stats.failed)
        await self.queue.heartbeat(beat)

    async def close(self) -> None:
        """Take this worker off the queue's list of workers and close the handle."""
        try:
            await self.queue.forget_worker(self.worker.info.id)
        except Exception as exc:
            logger.warning("could not take this worker off the queue's list: %s", exc)
        finally:
            await self.queue.close()


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    interrupts = 0

    def terminate(signame: str, hint: str = "") -> None:
        if not stop.is_set():
            logger.info("%s: draining (finishing batches in flight, claiming no more%s)", signame, hint)
        stop.set()

    def interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            terminate("SIGINT", "; Ctrl-C again stops at once")
            return
        sys.stderr.write(
            "\nmicrobatching worker: second SIGINT, stopping at once; unfinished jobs "
            "return to the queue when their leases run out\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    loop.add_signal_handler(signal.SIGTERM, terminate, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, interrupt)
