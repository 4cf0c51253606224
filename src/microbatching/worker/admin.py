"""``enqueue``, ``stats``, ``dead-letters`` and ``drop``: the commands that look after a queue.

``stats``, ``dead-letters`` and ``drop`` open the queue with ``create=False``: pointed at a
file or broker that holds no queue, they change nothing and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from .._job import Job
from ..errors import InvalidQueueError, MicroBatchingError
from ..queues import ClaimQueue, DeadLetter, QueueStats, WorkerInfo, redact
from .common import EXIT_ERROR, EXIT_OK, Interrupted, UsageError, command_name, open_queue, plural

__all__ = ["run_dead_letters", "run_drop", "run_enqueue", "run_stats"]

T = TypeVar("T")

_PROMPT = "reading jobs from the terminal: one JSON value per line, Ctrl-D to finish, Ctrl-C to cancel"


def _on_queue(queue: ClaimQueue, work: Callable[[ClaimQueue], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await work(queue)
        finally:
            await queue.close()

    return asyncio.run(main())


# -- enqueue -----------------------------------------------------------------------------------


def run_enqueue(args: argparse.Namespace) -> int:
    """``microbatching enqueue``: every value is stored, or (on failure) none, or it says how many were."""
    values = _json_values(args.data, "argument") if args.data else _read_stdin()
    jobs = [_job_from(value, args.with_ids, number) for number, value in values]
    queue = open_queue(args.queue, args.serializer)
    _on_queue(queue, lambda queue: _store(queue, jobs))
    print(f"enqueued {plural(len(jobs), 'job')} on {redact(args.queue)}")
    return EXIT_OK


def _read_stdin() -> list[tuple[int, Any]]:
    if sys.stdin.isatty():
        print(f"microbatching enqueue: {_PROMPT}", file=sys.stderr, flush=True)
    try:
        return _json_values(sys.stdin, "line")
    except KeyboardInterrupt:
        raise Interrupted("interrupted: nothing was enqueued") from None


async def _store(queue: ClaimQueue, jobs: list[Job[Any]]) -> None:
    """One ``enqueue`` call (all or none), or chunks of what the queue stores all-or-none."""
    try:
        messages = [queue.encode(job) for job in jobs]  # bad data is refused before anything is stored
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{exc}; nothing was enqueued") from None
    size = queue.atomic_enqueue_limit or len(messages) or 1
    stored = 0
    for start in range(0, len(messages), size):
        chunk = messages[start : start + size]
        try:
            await queue.enqueue(chunk)
        except InvalidQueueError:
            raise
        except Exception as exc:
            raise MicroBatchingError(_enqueue_failed(exc, stored, len(messages))) from exc
        stored += len(chunk)


def _enqueue_failed(error: BaseException, stored: int, total: int) -> str:
    if not stored:
        return f"nothing was enqueued: {error}"
    return (
        f"enqueued {stored} of {plural(total, 'job')} (the first {stored} values), then failed: "
        f"{error}; the other {total - stored} were not stored"
    )


def _json_values(source: Iterable[str], what: str) -> list[tuple[int, Any]]:
    values = []
    for number, text in enumerate(source, 1):
        if not text.strip():
            continue
        try:
            values.append((number, json.loads(text)))
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{what} {number} is not JSON: {_not_json(text, exc)}; nothing was enqueued"
            ) from None
    return values


def _not_json(text: str, error: json.JSONDecodeError) -> str:
    shown = text.strip()
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    hint = ""
    if shown[:1] not in '{["' and json.dumps(shown) != shown:
        hint = f" (a string needs JSON's quotes: '{json.dumps(shown)}')"
    return f"{shown!r}: {error.msg}{hint}"


def _job_from(value: Any, with_ids: bool, number: int) -> Job[Any]:
    if not with_ids:
        return Job(data=value)
    if not isinstance(value, dict) or "data" not in value:
        raise UsageError(f'with --with-ids, value {number} must be {{"id": ..., "data": ...}}')
    return Job(value.get("id"), value["data"])


# -- stats -------------------------------------------------------------------------------------


def run_stats(args: argparse.Namespace) -> int:
    """``microbatching stats [--interval S]``: the queue's counts and live workers (read-only)."""
    queue = open_queue(args.queue, args.serializer, create=False)
    try:
        return _on_queue(queue, lambda queue: _show_stats(queue, args))
    except KeyboardInterrupt:
        if args.interval is None:
            raise
        return EXIT_OK  # --interval runs until Ctrl-C


async def _show_stats(queue: ClaimQueue, args: argparse.Namespace) -> int:
    while True:
        stats = await queue.stats()
        workers = await queue.workers()
        if args.json:
            print(json.dumps(_stats_json(args.queue, stats, workers)), flush=True)
        else:
            _print_stats(args, stats, workers)
        if args.interval is None or _stdout_closed():
            return EXIT_OK
        await asyncio.sleep(args.interval)


def _stdout_closed() -> bool:
    return bool(getattr(sys.stdout, "broken", False))


def _stats_json(url: str, stats: QueueStats, workers: list[WorkerInfo] | None) -> dict[str, Any]:
    listed = None if workers is None else [vars(worker) for worker in workers]
    return {"queue": redact(url), "time": time.time(), **vars(stats), "workers": listed}


def _print_stats(args: argparse.Namespace, stats: QueueStats, workers: list[WorkerInfo] | None) -> None:
    if args.interval is not None and sys.stdout.isatty():
        sys.stdout.write("\033[H\033[2J")  # redraw in place, as `watch` does
    rows: list[tuple[str, object]] = [("queue", redact(args.queue))]
    if args.interval is not None:
        rows.append(("at", time.strftime("%Y-%m-%d %H:%M:%S")))
    rows += [
        ("pending", _count(stats.pending)),
        ("delayed", _count(stats.delayed)),
        ("in flight", _count(stats.in_flight)),
        ("done", _count(stats.done)),
        ("dead", _count(stats.dead)),
        ("oldest", "-" if stats.oldest_age is None else _duration(stats.oldest_age)),
        ("workers", "not tracked by this queue" if workers is None else len(workers)),
    ]
    lines = [f"{name:<10} {value}" for name, value in rows]
    lines += [f"{'':<10} {_worker_line(worker)}" for worker in workers or ()]
    print("\n".join(lines) + ("\n" if args.interval is not None else ""), flush=True)


def _count(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _worker_line(worker: WorkerInfo) -> str:
    now = time.time()
    return (
        f"{worker.host}:{worker.pid}  {worker.processor}  up {_duration(now - worker.started_at)}  "
        f"seen {_duration(now - worker.last_seen)} ago  done {worker.done:,}  failed {worker.failed:,}"
    )


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# -- drop --------------------------------------------------------------------------------------


def run_drop(args: argparse.Namespace) -> int:
    """``microbatching drop --yes``: delete the queue and everything it stored (never creates one)."""
    queue = open_queue(args.queue, args.serializer, create=False)

    async def drop(queue: ClaimQueue) -> str:
        held = _held(await queue.stats(), await queue.workers())
        if not args.yes:
            raise UsageError(f"{redact(args.queue)} holds {held}; nothing was dropped: pass --yes to drop it")
        await queue.drop()
        return held

    held = _on_queue(queue, drop)
    print(f"dropped {redact(args.queue)}: deleted {held}")
    return EXIT_OK


def _held(stats: QueueStats, workers: list[WorkerInfo] | None) -> str:
    counts = [("pending", stats.pending), ("delayed", stats.delayed), ("in flight", stats.in_flight),
              ("dead", stats.dead)]  # fmt: skip
    held = ", ".join(f"{_count(value)} {name}" for name, value in counts)
    if workers:
        held += f" ({plural(len(workers), 'live worker')} still using it)"
    return held


# -- dead letters ------------------------------------------------------------------------------


def run_dead_letters(args: argparse.Namespace) -> int:
    """``microbatching dead-letters list|requeue|purge`` (never creates a queue)."""
    if args.action == "list":
        return _list_dead(args)
    if not args.keys and not args.all:
        raise UsageError("give the keys of the dead letters (see list), or --all")
    if args.keys and args.all:
        raise UsageError("give either keys or --all, not both")
    return _change_dead(args, None if args.all else list(dict.fromkeys(args.keys)))


def _list_dead(args: argparse.Namespace) -> int:
    queue = open_queue(args.queue, args.serializer, create=False)
    dead_letters = _on_queue(queue, lambda queue: queue.dead_letters(args.limit))
    if not dead_letters and not args.json:
        print(f"no dead letters in {redact(args.queue)}")
    for dead in dead_letters:
        print(json.dumps(_dead_json(dead)) if args.json else _dead_text(dead, args.traceback))
    return EXIT_OK


def _dead_json(dead: DeadLetter) -> dict[str, Any]:
    return {**vars(dead), "data": _jsonable(dead.data), "job_id": _jsonable(dead.job_id)}


def _dead_text(dead: DeadLetter, with_traceback: bool) -> str:
    data = json.dumps(_jsonable(dead.data))
    data = data if len(data) <= 60 else data[:57] + "..."
    failed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dead.failed_at))
    line = (
        f"{dead.key}  id={_jsonable(dead.job_id)!r}  attempts={dead.attempts}  failed={failed}  "
        f"error={dead.error}  data={data}"
    )
    if with_traceback:
        trace = dead.traceback or "(no traceback stored: the processor returned the error)"
        line += "\n" + "\n".join(f"    {row}" for row in trace.rstrip("\n").split("\n"))
    return line


def _change_dead(args: argparse.Namespace, keys: Sequence[str] | None) -> int:
    queue = open_queue(args.queue, args.serializer, create=False)
    requeue = args.action == "requeue"

    async def change(queue: ClaimQueue) -> int:
        return await (queue.requeue_dead(keys) if requeue else queue.purge_dead(keys))

    count = _on_queue(queue, change)
    done = f"{'requeued' if requeue else 'purged'} {plural(count, 'dead letter')}"
    if keys is None or count == len(keys):
        print(done if count or keys is not None else f"no dead letters in {redact(args.queue)}")
        return EXIT_OK
    missing = len(keys) - count
    if count:
        print(done)
    if len(keys) == 1:
        problem = f"no dead letter has the key {keys[0]!r}"
    else:
        problem = f"{missing} of the {len(keys)} keys match{'es' if missing == 1 else ''} no dead letter"
    print(f"{command_name(args)}: {problem} (see dead-letters list)", file=sys.stderr)
    return EXIT_ERROR


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
