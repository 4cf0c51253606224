"""The ``microbatching`` command line: demo, worker, enqueue, stats, dead-letters."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (errors are one line, exit code 2)."""
    from .worker import cli as worker_cli  # worker, enqueue, stats, dead-letters

    parser = worker_cli.Parser(
        prog="microbatching",
        description="Batch single jobs by size, time and weight: a live demo, and durable workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run a live demo on the in-memory queue")
    demo.add_argument("--jobs", type=_at_least_one, default=60, help="how many jobs to submit (default 60)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the arrival pattern")
    worker_cli.add_commands(commands)
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _version() -> str:
    from . import __version__

    return __version__


class _Stdout:
    """Standard output that falls silent once its reader has gone (``microbatching demo | head -3``)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        #: Whether the reader went away (a command that repeats stops then).
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return int(self._stream.write(text))
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self.broken = True
        try:  # what is still buffered goes nowhere, so the flush at exit cannot fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    stdout = sys.stdout
    if stdout is not None and not isinstance(stdout, _Stdout):
        sys.stdout = _Stdout(stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout = stdout


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(jobs=args.jobs, seed=args.seed)
    from .worker import run_command

    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
