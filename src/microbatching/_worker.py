"""The worker command line: ``worker``, ``enqueue``, ``stats`` and ``dead-letters``.

Exit codes (also in docs/worker-cli.md):

- 0: done: the worker drained after SIGTERM/SIGINT (or ``--until-empty`` found the queue
  empty); ``enqueue``/``stats``/``dead-letters`` succeeded.
- 1: an unexpected error (the queue failed, the worker crashed).
- 2: a usage error: bad arguments, a processor that cannot be imported, a bad queue URL,
  input that is not JSON.
- 3: ``--drain-timeout`` ran out: unfinished jobs were given back to the queue.
- 130: a second SIGINT stopped the worker at once; its unfinished jobs come back to the
  queue when their leases run out.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import queues
from ._async import AsyncMicroBatching
from ._batch import Batch
from ._job import Job
from ._options import DEFAULT_BATCH_INTERVAL, DEFAULT_BATCH_SIZE
from ._retry import RetryPolicy
from .errors import InvalidQueueError, MicroBatchingError
from .queues import ClaimQueue
from .queues._registry import redact

__all__ = ["EXIT_DRAIN_TIMEOUT", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "add_commands"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DRAIN_TIMEOUT = 3
EXIT_INTERRUPTED = 130

DEFAULT_QUEUE = "sqlite:///microbatching.db"
_ENQUEUE_CHUNK = 1000

logger = logging.getLogger("microbatching.worker")
_MISSING = object()


class UsageError(Exception):
    """Bad input from the command line (exit code 2)."""


# -- wiring into the parser ----------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Register ``worker``, ``enqueue``, ``stats`` and ``dead-letters`` on the subparsers."""
    worker = commands.add_parser(
        "worker",
        help="process jobs from a durable queue",
        description="Process jobs from a durable queue in batches until "
        "SIGTERM/SIGINT (a second SIGINT stops at once).",
    )
    worker.add_argument(
        "processor",
        metavar="PACKAGE.MODULE:PROCESSOR",
        help="the batch processor: a callable, an object with process_batch(jobs), "
        "or a class of such objects (instantiated without arguments)",
    )
    _queue_options(worker)
    worker.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"jobs per batch at most (default {DEFAULT_BATCH_SIZE})",
    )
    worker.add_argument(
        "--batch-interval",
        type=float,
        default=DEFAULT_BATCH_INTERVAL,
        metavar="S",
        help=f"seconds a partial batch waits for more jobs (default {DEFAULT_BATCH_INTERVAL})",
    )
    worker.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="batches processed at once (default 1)"
    )
    worker.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        metavar="N",
        help="attempts per job before it is dead-lettered (default 3)",
    )
    worker.add_argument(
        "--retry-delay",
        type=float,
        default=1.0,
        metavar="S",
        help="delay before the first retry, doubling each time (default 1.0)",
    )
    worker.add_argument(
        "--max-retry-delay",
        type=float,
        default=60.0,
        metavar="S",
        help="longest delay between attempts (default 60)",
    )
    worker.add_argument(
        "--batch-timeout",
        type=float,
        default=None,
        metavar="S",
        help="fail a batch whose processor runs longer (default: no limit)",
    )
    worker.add_argument(
        "--lease",
        type=float,
        default=None,
        metavar="S",
        help="lease on claimed jobs, renewed while they are worked on; a dead "
        "worker's jobs come back after it (default 30)",
    )
    worker.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="S",
        help="on SIGTERM/SIGINT, give unfinished jobs back after S seconds (exit 3)",
    )
    worker.add_argument(
        "--until-empty",
        action="store_true",
        help="exit 0 once the queue has no pending, delayed or in-flight job",
    )
    worker.add_argument(
        "--log-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between progress lines when not on a terminal (default 10)",
    )
    worker.add_argument("--quiet", action="store_true", help="no progress output, only warnings")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (needs microbatching[prometheus])",
    )
    worker.add_argument(
        "--metrics-addr",
        default="0.0.0.0",
        metavar="ADDR",
        help="address of the metrics server (default 0.0.0.0: every interface)",
    )
    worker.set_defaults(handler=run_worker)

    enqueue = commands.add_parser(
        "enqueue",
        help="add jobs to a durable queue",
        description="Add one job per JSON value: each argument, or each "
        "line of standard input when there is none.",
    )
    _queue_options(enqueue)
    enqueue.add_argument("data", nargs="*", metavar="JSON", help="job data, one JSON value per job")
    enqueue.add_argument(
        "--with-ids",
        action="store_true",
        help='each value is {"id": ..., "data": ...} rather than the data alone',
    )
    enqueue.set_defaults(handler=run_enqueue)

    stats = commands.add_parser("stats", help="show a durable queue's counts")
    _queue_options(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(handler=run_stats)

    dead = commands.add_parser("dead-letters", help="list, requeue or purge dead-lettered jobs")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show dead letters, oldest first")
    _queue_options(listing)
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for name, text in (
        ("requeue", "put dead letters back in the queue, attempts reset"),
        ("purge", "delete dead letters for good"),
    ):
        action = actions.add_parser(name, help=text)
        _queue_options(action)
        action.add_argument("keys", nargs="*", metavar="KEY", help="the dead letters' keys (see list)")
        action.add_argument("--all", action="store_true", help="every dead letter")
    dead.set_defaults(handler=run_dead_letters)


def _queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queue",
        default=DEFAULT_QUEUE,
        metavar="URL",
        help=f"the queue (default {DEFAULT_QUEUE}, a file in the working directory)",
    )
    parser.add_argument(
        "--serializer",
        choices=("json", "pickle"),
        default=None,
        help="how the queue's jobs are encoded (default json; pickle only for trusted writers)",
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; returns its exit code."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        print(f"microbatching {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MicroBatchingError as exc:
        print(f"microbatching {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR


# -- shared helpers ----------------------------------------------------------------------------


def open_queue(url: str, serializer: str | None = None, **options: Any) -> ClaimQueue:
    """The durable queue a URL names (a bad URL or option is a usage error); ``None`` means not given."""
    given = {
        name: value for name, value in {"serializer": serializer, **options}.items() if value is not None
    }
    try:
        return queues.open_queue(url, **given)
    except (ValueError, TypeError, InvalidQueueError) as exc:
        raise UsageError(str(exc)) from None


def load_processor(spec: str) -> object:
    """Import ``package.module:attribute`` (a class is instantiated without arguments)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"processor must look like package.module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules in the working directory
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r} for the processor: {exc}") from None
    for name in attribute.split("."):
        target = getattr(target, name, _MISSING)
        if target is _MISSING:
            raise UsageError(f"{module_name!r} has no attribute {attribute!r}")
    if isinstance(target, type):
        target = target()
    if not callable(target) and not callable(getattr(target, "process_batch", None)):
        raise UsageError(f"{spec} is neither callable nor has a process_batch(jobs) method")
    return target


def _run_on_queue(args: argparse.Namespace, work: Callable[[ClaimQueue], Any]) -> Any:
    queue = open_queue(args.queue, args.serializer)

    async def main() -> Any:
        try:
            return await work(queue)
        finally:
            await queue.close()

    return asyncio.run(main())


# -- enqueue, stats, dead-letters --------------------------------------------------------------


def run_enqueue(args: argparse.Namespace) -> int:
    """``microbatching enqueue``."""
    values = _json_values(args.data if args.data else sys.stdin, "argument" if args.data else "line")
    jobs = [_job_from(value, args.with_ids, number) for number, value in values]

    async def work(queue: ClaimQueue) -> None:
        messages = [queue.encode(job) for job in jobs]  # refuse bad input before storing any
        for start in range(0, len(messages), _ENQUEUE_CHUNK):
            await queue.enqueue(messages[start : start + _ENQUEUE_CHUNK])

    try:
        _run_on_queue(args, work)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"enqueued {len(jobs)} jobs on {redact(args.queue)}")
    return EXIT_OK


def _json_values(source: Sequence[str] | TextIO, what: str) -> list[tuple[int, Any]]:
    values = []
    for number, text in enumerate(source, 1):
        if not text.strip():
            continue
        try:
            values.append((number, json.loads(text)))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{what} {number} is not JSON ({exc}); nothing was enqueued") from None
    return values


def _job_from(value: Any, with_ids: bool, number: int) -> Job[Any]:
    if not with_ids:
        return Job(data=value)
    if not isinstance(value, dict) or "data" not in value:
        raise UsageError(f'with --with-ids, value {number} must be {{"id": ..., "data": ...}}')
    return Job(value.get("id"), value["data"])


def run_stats(args: argparse.Namespace) -> int:
    """``microbatching stats``."""

    async def work(queue: ClaimQueue) -> Any:
        return await queue.stats()

    stats = _run_on_queue(args, work)
    if args.json:
        print(json.dumps({"queue": redact(args.queue), **vars(stats)}))
        return EXIT_OK
    age = "-" if stats.oldest_age is None else f"{stats.oldest_age:.1f} s"
    rows = [
        ("queue", redact(args.queue)),
        ("pending", stats.pending),
        ("delayed", stats.delayed),
        ("in flight", stats.in_flight),
        ("done", stats.done),
        ("dead", stats.dead),
        ("oldest", age),
    ]
    for name, value in rows:
        print(f"{name:<10} {value}")
    return EXIT_OK


def run_dead_letters(args: argparse.Namespace) -> int:
    """``microbatching dead-letters list|requeue|purge``."""
    if args.action == "list":

        async def listing(queue: ClaimQueue) -> Any:
            return await queue.dead_letters(args.limit)

        dead_letters = _run_on_queue(args, listing)
        if not dead_letters and not args.json:
            print(f"no dead letters in {redact(args.queue)}")
        for dead in dead_letters:
            if args.json:
                fields = {**vars(dead), "data": _jsonable(dead.data), "job_id": _jsonable(dead.job_id)}
                print(json.dumps(fields))
            else:
                data = json.dumps(_jsonable(dead.data))
                data = data if len(data) <= 60 else data[:57] + "..."
                print(
                    f"{dead.key}  id={_jsonable(dead.job_id)!r}  attempts={dead.attempts}  "
                    f"error={dead.error}  data={data}"
                )
        return EXIT_OK
    if not args.keys and not args.all:
        raise UsageError(f"{args.action}: give the keys of the dead letters (see list), or --all")
    keys = None if args.all else args.keys

    async def change(queue: ClaimQueue) -> int:
        if args.action == "requeue":
            return await queue.requeue_dead(keys)
        return await queue.purge_dead(keys)

    count = _run_on_queue(args, change)
    print(f"{'requeued' if args.action == 'requeue' else 'purged'} {count} dead letters")
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


# -- the worker ------------------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    """``microbatching worker``: process the queue until told to stop."""
    _check_worker_args(args)
    processor = load_processor(args.processor)
    queue = open_queue(args.queue, args.serializer, lease=args.lease)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if sys.stderr.isatty():  # a log record starts on a clean line, not after the live progress
        for handler in logging.getLogger().handlers:
            handler.addFilter(_clear_progress_line)
    try:
        return asyncio.run(_work(args, processor, queue))
    except Exception:
        logger.exception("worker failed")
        return EXIT_ERROR


def _check_worker_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "concurrency", "max_attempts"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("batch_interval", "retry_delay", "max_retry_delay"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("lease", "batch_timeout", "drain_timeout", "log_interval"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {value}")


async def _work(args: argparse.Namespace, processor: object, queue: ClaimQueue) -> int:
    retry = RetryPolicy(
        max_attempts=args.max_attempts,
        base_delay=args.retry_delay,
        max_delay=max(args.max_retry_delay, args.retry_delay),
    )
    mb = AsyncMicroBatching(
        queue,
        processor,
        batch_size=args.batch_size,
        batch_interval=args.batch_interval,
        max_concurrent_batches=args.concurrency,
        retry=retry,
        batch_timeout=args.batch_timeout,
    )
    progress = Progress(mb, sys.stderr, args.log_interval, quiet=args.quiet)
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    mb.start()
    metrics = _serve_metrics(args, mb)
    logger.info(
        "worker %d started: %s on %s, batch_size=%d, batch_interval=%ss, concurrency=%d, "
        "max_attempts=%d, lease=%ss",
        os.getpid(),
        args.processor,
        redact(args.queue),
        args.batch_size,
        args.batch_interval,
        args.concurrency,
        args.max_attempts,
        queue.lease,
    )
    watchers = [asyncio.ensure_future(progress.run(stop))]
    if args.until_empty:
        watchers.append(asyncio.ensure_future(_stop_when_empty(args, mb, stop)))
    await stop.wait()
    progress.stopping()
    started = time.monotonic()
    await mb.shutdown(timeout=args.drain_timeout)
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    progress.final()
    if metrics is not None:
        metrics.close()
    timed_out = args.drain_timeout is not None and time.monotonic() - started >= args.drain_timeout
    if timed_out:
        logger.warning("drain timeout: unfinished jobs were given back to the queue")
        return EXIT_DRAIN_TIMEOUT
    return EXIT_OK


def _serve_metrics(args: argparse.Namespace, mb: AsyncMicroBatching) -> Any:
    """With ``--metrics-port``, serve the batcher's Prometheus metrics; returns the server or None."""
    if getattr(args, "metrics_port", None) is None:
        return None
    try:
        from .metrics.prometheus import start_metrics_server
    except ImportError as exc:  # the message names the extra to install
        raise UsageError(f"--metrics-port: {exc}") from None
    return start_metrics_server(args, mb)


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


async def _stop_when_empty(args: argparse.Namespace, mb: AsyncMicroBatching, stop: asyncio.Event) -> None:
    watcher = open_queue(args.queue, args.serializer)
    try:
        while not stop.is_set():
            await asyncio.sleep(0.2)
            stats = await watcher.stats()
            if stats.pending == stats.delayed == stats.in_flight == 0 and mb.stats().pending == 0:
                logger.info("queue is empty: stopping (--until-empty)")
                stop.set()
    finally:
        await watcher.close()


def _clear_progress_line(record: logging.LogRecord) -> bool:
    sys.stderr.write("\r\033[K")
    return True


class Progress:
    """Live progress on a terminal (one rewritten line), plain log lines otherwise."""

    def __init__(self, mb: AsyncMicroBatching, stream: TextIO, log_interval: float, quiet: bool) -> None:
        self.mb, self.stream, self.quiet = mb, stream, quiet
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else log_interval
        self.batches = 0
        self.batched_jobs = 0
        self.started = time.monotonic()
        self._last = (self.started, 0)
        mb.on("batch_started", self._batch_started)

    def _batch_started(self, batch: Batch) -> None:
        self.batches += 1
        self.batched_jobs += len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Report every interval until ``stop``."""
        if self.quiet:
            return
        while not stop.is_set():
            await asyncio.sleep(self.interval)
            self.report()

    def line(self) -> str:
        """The current figures, in one line."""
        stats = self.mb.stats()
        now = time.monotonic()
        finished = stats.completed + stats.failed
        then, before = self._last
        rate = (finished - before) / max(now - then, 1e-9)
        self._last = (now, finished)
        mean = self.batched_jobs / self.batches if self.batches else 0.0
        # Jobs abandoned by a drain timeout are not failures: they go back to the queue.
        given_back = f"  given back {stats.cancelled}" if stats.cancelled else ""
        return (
            f"done {stats.completed}  failed {stats.failed}{given_back}  retried {stats.retried}  "
            f"{rate:.0f} jobs/s  batches {self.batches} (mean size {mean:.1f})  "
            f"in flight {stats.in_flight}"
        )

    def report(self) -> None:
        """One progress update."""
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
        else:
            logger.info("%s", self.line())

    def stopping(self) -> None:
        """End the live line before the shutdown messages."""
        if self.tty and not self.quiet:
            self.stream.write("\n")

    def final(self) -> None:
        """The summary line at exit."""
        if not self.quiet:
            elapsed = time.monotonic() - self.started
            self._last = (self.started, 0)
            logger.info("worker %d stopped after %.1f s: %s", os.getpid(), elapsed, self.line())
