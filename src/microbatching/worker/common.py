"""What every command shares: exit codes, usage errors, opening the queue, messages."""

from __future__ import annotations

import argparse
from typing import Any

from .. import queues
from ..errors import InvalidQueueError
from ..queues import ClaimQueue

__all__ = [
    "DEFAULT_QUEUE",
    "EXIT_DEAD_LETTERS",
    "EXIT_DRAIN_TIMEOUT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Interrupted",
    "UsageError",
    "command_name",
    "open_queue",
    "plural",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DRAIN_TIMEOUT = 3
EXIT_DEAD_LETTERS = 4
EXIT_INTERRUPTED = 130

DEFAULT_QUEUE = "sqlite:///microbatching.db"


class UsageError(Exception):
    """Bad input from the command line, or a queue that is not one (exit code 2)."""


class Interrupted(Exception):
    """Ctrl-C where the command says what it left undone (exit code 130)."""


def command_name(args: argparse.Namespace) -> str:
    """``"microbatching stats"``, ``"microbatching dead-letters list"``: who speaks in messages."""
    action = getattr(args, "action", None)
    return f"microbatching {args.command}" + (f" {action}" if action else "")


def open_queue(url: str, serializer: str | None = None, *, create: bool = True, **options: Any) -> ClaimQueue:
    """The durable queue ``url`` names; a bad URL or option is a usage error.

    An option given as ``None`` was not given on the command line (the URL's query or the
    queue's default applies).  With ``create=False`` nothing is created: a queue that
    does not exist is refused when first used.
    """
    given = {
        name: value for name, value in {"serializer": serializer, **options}.items() if value is not None
    }
    try:
        return queues.open_queue(url, create=create, **given)
    except (ValueError, TypeError, InvalidQueueError) as exc:
        raise UsageError(str(exc)) from None


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 job"``, ``"2 jobs"``: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
