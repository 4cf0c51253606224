"""The ``microbatching`` command line: demo, worker, enqueue, stats, dead-letters."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microbatching",
        description="Batch single jobs by size, time and weight: a live demo, and durable workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run a live demo on the in-memory queue")
    demo.add_argument("--jobs", type=_at_least_one, default=60, help="how many jobs to submit (default 60)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the arrival pattern")
    from ._worker import add_commands  # worker, enqueue, stats, dead-letters

    add_commands(commands)
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(jobs=args.jobs, seed=args.seed)
    if getattr(args, "handler", None) is not None:
        from ._worker import run

        return run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
