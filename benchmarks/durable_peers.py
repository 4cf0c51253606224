"""Other SQLite-backed job queues doing the durable workload through their own public API.

Each puts ``n`` jobs (the integers ``0..n-1``) one call per job, then takes them one by
one, doubles each, checks the result and acknowledges it, all in this one process, each
on a fresh database file in a temporary directory: the same enqueue-then-process work as
the durable benchmark's ``sqlite`` row, on the peer's own defaults unless the name says
otherwise.  A peer that is not installed is skipped with a message.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Callable

from harness import Metrics

__all__ = ["PEERS", "available"]


def _checked(results: list[int], n: int, peer: str, elapsed: float) -> Metrics:
    """Every job processed once, in order (each peer is first in, first out): its data doubled."""
    ok = sum(result == x * 2 for x, result in enumerate(results))
    if ok != n or len(results) != n:
        raise AssertionError(f"durable {peer}: {ok} of {n} results were correct ({len(results)} processed)")
    return {"jobs_per_s": n / elapsed}


def _huey(n: int, fsync: bool | None) -> Metrics:
    """Huey's SqliteHuey: a task per job, then ``dequeue`` and ``execute`` until empty."""
    from huey import SqliteHuey

    peer = "huey" if fsync is None else f"huey fsync={fsync}"
    with tempfile.TemporaryDirectory() as tmp:
        options = {} if fsync is None else {"fsync": fsync}
        huey = SqliteHuey(filename=os.path.join(tmp, "huey.db"), **options)

        @huey.task()
        def double(x: int) -> int:
            return x * 2

        start = time.perf_counter()
        for x in range(n):
            double(x)
        results = []
        while (task := huey.dequeue()) is not None:
            results.append(huey.execute(task))
        elapsed = time.perf_counter() - start
        huey.storage.close()
    return _checked(results, n, peer, elapsed)


def _persist_queue(n: int) -> Metrics:
    """persist-queue's SQLiteAckQueue: ``put`` per job, then ``get`` and ``ack`` until empty."""
    import persistqueue

    with tempfile.TemporaryDirectory() as tmp:
        queue = persistqueue.SQLiteAckQueue(os.path.join(tmp, "queue"))
        start = time.perf_counter()
        for x in range(n):
            queue.put(x)
        results = []
        while True:
            try:
                item = queue.get(block=False)
            except persistqueue.Empty:
                break
            results.append(item * 2)
            queue.ack(item)
        elapsed = time.perf_counter() - start
    return _checked(results, n, "persist-queue", elapsed)


def _litequeue(n: int) -> Metrics:
    """litequeue's LiteQueue: ``put`` per job (text), then ``pop`` and ``done`` until empty."""
    from litequeue import LiteQueue

    with tempfile.TemporaryDirectory() as tmp:
        queue = LiteQueue(os.path.join(tmp, "queue.db"))
        start = time.perf_counter()
        for x in range(n):
            queue.put(str(x))
        results = []
        while (message := queue.pop()) is not None:
            results.append(int(message.data) * 2)
            queue.done(message.message_id)
        elapsed = time.perf_counter() - start
        queue.close()
    return _checked(results, n, "litequeue", elapsed)


#: peer name -> (importable module it needs, run with n jobs)
PEERS: dict[str, tuple[str, Callable[[int], Metrics]]] = {
    "huey, fsync off": ("huey", lambda n: _huey(n, fsync=False)),
    "huey, defaults": ("huey", lambda n: _huey(n, fsync=None)),
    "persist-queue": ("persistqueue", _persist_queue),
    "litequeue": ("litequeue", _litequeue),
}


def available(n: int) -> tuple[dict[str, Callable[[], Metrics]], list[str]]:
    """The installed peers as no-argument runners of ``n`` jobs, and a note for each one missing."""
    runners: dict[str, Callable[[], Metrics]] = {}
    missing = []
    for name, (module, run) in PEERS.items():
        if importlib.util.find_spec(module) is None:
            missing.append(f"{name}: not installed, skipped (python -m pip install -e '.[bench]')")
        else:
            runners[name] = lambda run=run: run(n)  # type: ignore[misc]
    return runners, missing
