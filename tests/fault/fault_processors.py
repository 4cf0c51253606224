"""Processors run by the fault tests' worker processes (imported as fault_processors:record).

Behaviour comes from the environment:

- FAULT_LOG_DIR: each process appends ``job_id attempts wall_time`` lines, one write per
  batch, to ``effects-<pid>.log`` there: the side effect whose loss or repetition is counted.
- FAULT_SLEEP: seconds of "work" per batch after the side effect (widens the window
  between the side effect and the acknowledgement).
- FAULT_SELF_KILL: probability per batch of SIGKILLing this process right after the side
  effect, before the batch's results reach the queue.
- FAULT_POISON_MOD: jobs whose id is a multiple of it always fail (per-slot error).
- FAULT_KILLER: the id of a job whose processing kills the process (os._exit).
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

_fd: int | None = None


def _log(lines: str) -> None:
    global _fd
    if _fd is None:
        path = os.path.join(os.environ["FAULT_LOG_DIR"], f"effects-{os.getpid()}.log")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, lines.encode())


def record(jobs: list[Any]) -> list[Any]:
    killer = os.environ.get("FAULT_KILLER")
    if killer is not None and any(str(job.id) == killer for job in jobs):
        os._exit(17)
    now = time.time()
    _log("".join(f"{job.id} {job.attempts} {now:.6f}\n" for job in jobs))
    if random.random() < float(os.environ.get("FAULT_SELF_KILL", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(os.environ.get("FAULT_SLEEP", "0")))
    poison = int(os.environ.get("FAULT_POISON_MOD", "0"))
    return [ValueError(f"poison {job.id}") if poison and job.id % poison == 0 else job.id for job in jobs]
