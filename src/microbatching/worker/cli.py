"""The argparse wiring of the ``worker``, ``enqueue``, ``stats``, ``dead-letters`` and ``drop``
commands, and their exit codes.

Every option is declared here with the check it gets (one table, :data:`CHECKS`, using the
batcher's own validators), and :func:`run` turns what a command raises into one line on
stderr and its exit code (see docs/worker-cli.md).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from .._options import DEFAULT_BATCH_INTERVAL, DEFAULT_BATCH_SIZE, OBJECTIVES
from .._validate import positive_int, seconds
from ..errors import InvalidQueueError, MicroBatchingError
from ..queues._registry import scrub
from .common import (
    DEFAULT_QUEUE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Interrupted,
    UsageError,
    command_name,
)

__all__ = ["CHECKS", "LOG_LEVELS", "Parser", "add_commands", "check_options", "run_command"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage only when a required argument is missing)."""

    def error(self, message: str) -> NoReturn:
        if "arguments are required" in message:
            self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


# -- the checks: one per option, the batcher's validators, run before anything starts --------------


def _seconds(name: str, value: Any) -> None:
    seconds(name, value)


def _positive_seconds(name: str, value: Any) -> None:
    seconds(name, value, allow_zero=False)


def _positive_int(name: str, value: Any) -> None:
    positive_int(name, value)


def _port(name: str, value: Any) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{name} must be a TCP port, 0 to 65535, got {value}")


#: dest -> check(flag, value), for every numeric option of every command (``None``: not given).
CHECKS: dict[str, Callable[[str, Any], None]] = {
    "batch_size": _positive_int,
    "concurrency": _positive_int,
    "max_attempts": _positive_int,
    "limit": _positive_int,
    "batch_interval": _seconds,
    "retry_delay": _seconds,
    "max_retry_delay": _seconds,
    "lease": _positive_seconds,
    "batch_timeout": _positive_seconds,
    "latency_target": _positive_seconds,
    "drain_timeout": _positive_seconds,
    "log_interval": _positive_seconds,
    "interval": _positive_seconds,
    "metrics_port": _port,
}


def check_options(args: argparse.Namespace) -> None:
    """Refuse an out-of-range option with a :class:`UsageError` naming its flag."""
    for dest, check in CHECKS.items():
        value = getattr(args, dest, None)
        if value is not None:
            try:
                check(f"--{dest.replace('_', '-')}", value)
            except (TypeError, ValueError) as exc:
                raise UsageError(str(exc)) from None
    if getattr(args, "objective", "latency") != "latency" and getattr(args, "latency_target", None) is None:
        raise UsageError("--objective needs --latency-target (the adaptive policy)")


# -- the commands ------------------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Register ``worker``, ``enqueue``, ``stats``, ``dead-letters`` and ``drop`` on the subparsers."""
    from . import admin
    from .run import run_worker

    worker = commands.add_parser(
        "worker",
        help="process jobs from a durable queue",
        description="Process jobs from a durable queue in batches until "
        "SIGTERM/SIGINT (a second SIGINT stops at once).",
    )
    _worker_options(worker)
    worker.set_defaults(handler=run_worker)

    enqueue = commands.add_parser(
        "enqueue",
        help="add jobs to a durable queue",
        description="Add one job per JSON value: each argument, or each "
        "line of standard input when there is none (all of them or, on failure, none).",
    )
    _queue_options(enqueue)
    enqueue.add_argument("data", nargs="*", metavar="JSON", help="job data, one JSON value per job")
    enqueue.add_argument(
        "--with-ids",
        action="store_true",
        help='each value is {"id": ..., "data": ...} rather than the data alone',
    )
    enqueue.set_defaults(handler=admin.run_enqueue)

    stats = commands.add_parser(
        "stats", help="show a durable queue's counts", description="Show a durable queue's counts "
        "and its live workers (read-only: never creates or changes anything)."
    )  # fmt: skip
    _queue_options(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object (one per interval)")
    stats.add_argument(
        "--interval", type=float, default=None, metavar="S", help="repeat every S seconds until Ctrl-C"
    )
    stats.set_defaults(handler=admin.run_stats)
    _dead_letter_commands(commands, admin.run_dead_letters)

    drop = commands.add_parser(
        "drop", help="delete a durable queue and everything it stored",
        description="Delete a durable queue: its jobs, dead letters, tables, keys, streams or broker "
        "queues. Without --yes it only says what the queue holds.",
    )  # fmt: skip
    _queue_options(drop)
    drop.add_argument("--yes", action="store_true", help="really delete it")
    drop.set_defaults(handler=admin.run_drop)


def _worker_options(worker: argparse.ArgumentParser) -> None:
    worker.add_argument(
        "processor",
        metavar="PACKAGE.MODULE:PROCESSOR",
        help="the batch processor: a callable, an object with process_batch(jobs), "
        "or a class of such objects (instantiated without arguments)",
    )
    _queue_options(worker)
    option = worker.add_argument
    option(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"jobs per batch at most (default {DEFAULT_BATCH_SIZE})",
    )
    option(
        "--batch-interval",
        type=float,
        default=DEFAULT_BATCH_INTERVAL,
        metavar="S",
        help=f"seconds a partial batch waits for more jobs (default {DEFAULT_BATCH_INTERVAL})",
    )
    option("--concurrency", type=int, default=1, metavar="N", help="batches processed at once (default 1)")
    option(
        "--latency-target",
        type=float,
        default=None,
        metavar="S",
        help="batch adaptively: keep the p99 of job latency under S seconds, the batch size and "
        "wait found as it runs (--batch-size stays a hard cap; --batch-interval is not used)",
    )
    option(
        "--objective",
        choices=OBJECTIVES,
        default="latency",
        help="with --latency-target: 'latency' (lowest mean latency, the default) or 'cost' "
        "(fewest processor calls per job)",
    )
    option(
        "--max-attempts",
        type=int,
        default=3,
        metavar="N",
        help="attempts per job before it is dead-lettered (default 3)",
    )
    option(
        "--retry-delay",
        type=float,
        default=1.0,
        metavar="S",
        help="delay before the first retry, doubling each time (default 1.0)",
    )
    option(
        "--max-retry-delay",
        type=float,
        default=60.0,
        metavar="S",
        help="longest delay between attempts (default 60)",
    )
    option(
        "--batch-timeout",
        type=float,
        default=None,
        metavar="S",
        help="fail a batch whose processor runs longer (default: no limit)",
    )
    option(
        "--lease",
        type=float,
        default=None,
        metavar="S",
        help="lease on claimed jobs, renewed while they are worked on; a dead "
        "worker's jobs come back after it (default 30)",
    )
    option(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="S",
        help="on SIGTERM/SIGINT, give unfinished jobs back after S seconds (exit 3)",
    )
    option(
        "--until-empty",
        action="store_true",
        help="exit once the queue has no pending, delayed or in-flight job "
        "(exit 0; 4 if jobs were dead-lettered)",
    )
    _output_options(worker)
    option(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics (needs microbatching[prometheus])",
    )
    option("--metrics-addr", default="127.0.0.1", metavar="ADDR",
           help="address of the metrics server (default 127.0.0.1: this machine only; "
           "0.0.0.0 for every interface)")  # fmt: skip


def _output_options(worker: argparse.ArgumentParser) -> None:
    worker.add_argument(
        "--log-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between progress lines when not on a terminal (default 10)",
    )
    level = worker.add_mutually_exclusive_group()
    level.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        metavar="LEVEL",
        help="DEBUG (a line per batch), INFO (default: start, progress, retries, stop), WARNING or ERROR",
    )
    level.add_argument("--quiet", action="store_true", help="no progress output, only warnings and errors")


def _dead_letter_commands(commands: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    dead = commands.add_parser("dead-letters", help="list, requeue or purge dead-lettered jobs")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="show dead letters, oldest first (read-only)",
        description="Show dead letters, oldest first: key, job id, attempts, when and why it failed.",
    )  # fmt: skip
    _queue_options(listing)
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (default 100)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line, with the traceback")
    listing.add_argument("--traceback", action="store_true", help="show each stored traceback")
    for name, text in (
        ("requeue", "put dead letters back in the queue, attempts reset"),
        ("purge", "delete dead letters for good"),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _queue_options(action)
        action.add_argument("keys", nargs="*", metavar="KEY", help="the dead letters' keys (see list)")
        action.add_argument("--all", action="store_true", help="every dead letter")
    dead.set_defaults(handler=handler)


def _queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queue",
        default=DEFAULT_QUEUE,
        metavar="URL",
        help=f"the queue: a URL or a SQLite file path (default {DEFAULT_QUEUE}, in the working directory)",
    )
    parser.add_argument(
        "--serializer",
        choices=("json", "pickle"),
        default=None,
        help="how the queue's jobs are encoded (default json; pickle only for trusted writers)",
    )


# -- running a command -------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; returns its exit code (errors are one line on stderr)."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        check_options(args)
        return handler(args)
    except (UsageError, InvalidQueueError) as exc:
        _say(args, exc)
        return EXIT_USAGE
    except MicroBatchingError as exc:
        _say(args, exc)
        return EXIT_ERROR
    except Interrupted as exc:
        _say(args, exc)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say(args, "interrupted")
        return EXIT_INTERRUPTED
    except Exception:  # a bug: its traceback, with the queue's secrets taken out
        print(scrub(traceback.format_exc(), args.queue), file=sys.stderr, end="")
        return EXIT_ERROR


def _say(args: argparse.Namespace, error: BaseException | str) -> None:
    text = " ".join(str(error).split("\n")) or type(error).__name__
    print(f"{command_name(args)}: {scrub(text, args.queue)}", file=sys.stderr)
