"""The worker command line: ``worker``, ``enqueue``, ``stats`` and ``dead-letters``.

- :mod:`.cli`: the options of each command, their checks, and the exit codes;
- :mod:`.run`: the worker (signals, drain, the queue watched while it runs);
- :mod:`.admin`: ``enqueue``, ``stats`` and ``dead-letters``;
- :mod:`.progress`: the live line, the log lines and the failures logged.

Exit codes (also in docs/worker-cli.md):

- 0: done: the worker drained after SIGTERM/SIGINT, or ``--until-empty`` found the queue
  empty with no job dead-lettered; ``enqueue``/``stats``/``dead-letters`` succeeded.
- 1: an error: the queue failed, the worker crashed, ``enqueue`` could not store its jobs
  (it says how many it did store), ``dead-letters requeue|purge`` named unknown keys.
- 2: a usage error: bad arguments, a processor that cannot be imported, a bad queue URL or
  a path that is not a queue, input that is not JSON, a metrics port it cannot serve.
- 3: ``--drain-timeout`` ran out: unfinished jobs were given back to the queue.
- 4: ``--until-empty`` ran the queue empty, but jobs were dead-lettered on the way.
- 130: a second SIGINT stopped the worker at once (its unfinished jobs come back to the
  queue when their leases run out); Ctrl-C stopped another command.
"""

from .cli import add_commands, run_command
from .common import (
    EXIT_DEAD_LETTERS,
    EXIT_DRAIN_TIMEOUT,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)

__all__ = [
    "EXIT_DEAD_LETTERS",
    "EXIT_DRAIN_TIMEOUT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_commands",
    "run_command",
]
