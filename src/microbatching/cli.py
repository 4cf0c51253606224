"""The ``microbatching`` command: ``microbatching demo`` (more subcommands as queues arrive)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="microbatching", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser("demo", help="run a live demo on the in-memory queue")
    demo.add_argument("--jobs", type=int, default=60, help="how many jobs to submit (default 60)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the arrival pattern")
    from ._worker import add_commands  # worker, enqueue, stats, dead-letters

    add_commands(commands)
    return parser


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
