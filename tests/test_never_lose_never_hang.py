"""Hostile cases for the engine's promise: no accepted job is lost, no caller hangs.

Every wait here is bounded, so a hang shows up as a failed assertion.  Scenarios that can
wedge a batcher for good (a dead loop thread, a deadlocked submit, a fork) run in a fresh
interpreter started with ``subprocess``: a wedged batcher would otherwise hang this test
process at exit, when the exit hook tries to drain it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from concurrent.futures import wait
from typing import Any

import pytest

from microbatching import (
    AsyncMicroBatching,
    Job,
    JobCancelledError,
    JobResult,
    MicroBatching,
    SerializationError,
    State,
)
from microbatching.queues import SQLiteQueue

# Every wait below is bounded well within this; it only stops a test the bounds missed.
pytestmark = pytest.mark.timeout(30)


def echo(jobs: list[Job[Any]]) -> list[Any]:
    return [job.data for job in jobs]


async def async_echo(jobs: list[Job[Any]]) -> list[Any]:
    return [job.data for job in jobs]


def run_child(code: str, timeout: float, *args: str) -> dict[str, Any]:
    """Run ``code`` (with ``args`` in ``sys.argv[1:]``) in a fresh interpreter.

    It prints one JSON object as its last line of output, which is returned.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child interpreter did not finish within {timeout}s (it hung): {exc.stdout!r}")
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the child printed nothing (exit {proc.returncode}); stderr:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def settled_outcome(handle: JobResult) -> str:
    """``"result"`` or the name of the error a settled handle holds."""
    error = handle.exception(timeout=0)
    return "result" if error is None else type(error).__name__


# -- shutdown(cancel=True) and shutdown(timeout=...) settle every job ----------------------------------


def test_shutdown_cancel_settles_the_jobs_of_the_open_batch() -> None:
    mb = MicroBatching(None, echo, batch_size=100, batch_interval=9)
    handles = [mb.submit_job(Job(i, i)) for i in range(3)]
    mb.shutdown(cancel=True)
    _, pending = wait(handles, timeout=2)
    assert not pending, (
        f"{len(pending)} of {len(handles)} handles still pending after shutdown(cancel=True) returned"
    )
    for handle in handles:
        assert settled_outcome(handle) in ("result", "JobCancelledError")
    stats = mb.stats()
    assert stats.pending == 0, stats
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled, stats


def test_async_shutdown_cancel_settles_the_jobs_of_the_open_batch() -> None:
    async def main() -> None:
        mb = AsyncMicroBatching(None, async_echo, batch_size=100, batch_interval=9)
        mb.start()
        futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3)]
        await asyncio.wait_for(mb.shutdown(cancel=True), 5)
        _, pending = await asyncio.wait(futures, timeout=1)
        assert not pending, (
            f"{len(pending)} of {len(futures)} futures still pending after shutdown(cancel=True) returned"
        )
        for future in futures:
            error = future.exception()
            assert error is None or isinstance(error, JobCancelledError), repr(error)
        stats = mb.stats()
        assert stats.pending == 0, stats
        assert stats.submitted == stats.completed + stats.failed + stats.cancelled, stats

    asyncio.run(main())


async def _yielding_echo(jobs: list[Job[Any]]) -> list[Any]:
    await asyncio.sleep(0)
    return [job.data for job in jobs]


def test_shutdown_timeout_settles_every_job_when_it_races_a_starting_batch() -> None:
    """Many one-job batches start back to back, so the timeout often lands as one is being started."""
    for trial in range(10):
        mb = MicroBatching(None, _yielding_echo, batch_size=1, batch_interval=0, max_concurrent_batches=2)
        handles = [mb.submit_job(Job(i, i)) for i in range(3000)]
        mb.shutdown(timeout=0.01 + 0.004 * trial)
        _, pending = wait(handles, timeout=1)
        assert not pending, (
            f"trial {trial}: {len(pending)} of {len(handles)} handles still pending after "
            "shutdown(timeout=...) returned"
        )
        assert mb.stats().pending == 0, mb.stats()


def test_async_shutdown_timeout_settles_every_job_when_it_races_a_starting_batch() -> None:
    async def main() -> None:
        for trial in range(10):
            mb = AsyncMicroBatching(
                None, _yielding_echo, batch_size=1, batch_interval=0, max_concurrent_batches=2
            )
            mb.start()
            futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3000)]
            await asyncio.wait_for(mb.shutdown(timeout=0.01 + 0.004 * trial), 5)
            pending = [future for future in futures if not future.done()]
            for future in futures:
                if future.done():
                    future.exception()  # retrieved: no "never retrieved" noise
            assert not pending, (
                f"trial {trial}: {len(pending)} of {len(futures)} futures still pending after "
                "shutdown(timeout=...) returned"
            )
            assert mb.stats().pending == 0, mb.stats()

    asyncio.run(main())


# -- fork ---------------------------------------------------------------------------------------

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

_FORK_PREAMBLE = """
import json, os, sys, time
from microbatching import Job, MicroBatching

def echo(jobs):
    return [job.data for job in jobs]

mb = MicroBatching(None, echo, batch_interval=0.01)
assert mb.submit_job(Job("parent", 1)).result(timeout=5) == 1  # the loop thread is running

def wait_for_child(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"
"""


@needs_fork
@pytest.mark.parametrize("how", ["multiprocessing", "os.fork"])
def test_a_forked_child_that_never_uses_the_batcher_exits_promptly(how: str) -> None:
    code = _FORK_PREAMBLE + textwrap.dedent(
        """
        how = sys.argv[1]
        if how == "multiprocessing":
            import multiprocessing
            child = multiprocessing.get_context("fork").Process(target=lambda: None)
            child.start()
            child.join(4)
            exit_code = "hung" if child.is_alive() else child.exitcode
            if child.is_alive():
                child.kill()
                child.join()
        else:
            pid = os.fork()
            if pid == 0:
                sys.exit(0)  # a normal interpreter exit in the child, exit hooks included
            exit_code = wait_for_child(pid, 4)
        mb.shutdown()
        print(json.dumps({"child_exit": exit_code}), flush=True)
        os._exit(0)
        """
    )
    outcome = run_child(code, 25, how)
    assert outcome["child_exit"] == 0, (
        f"a child forked ({how}) from a process with a running MicroBatching, never touching it, "
        f"did not exit promptly: {outcome}"
    )


@needs_fork
def test_submit_job_in_a_forked_child_settles_or_is_refused_never_hangs() -> None:
    code = _FORK_PREAMBLE + textwrap.dedent(
        """
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                handle = mb.submit_job(Job("child", 2))
            except Exception as exc:
                outcome = {"submit": "refused", "error": f"{type(exc).__name__}: {exc}"}
            else:
                try:
                    outcome = {"submit": "settled", "result": handle.result(timeout=3)}
                except TimeoutError:
                    outcome = {"submit": "hung"}
                except Exception as exc:
                    outcome = {"submit": "settled", "error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(outcome).encode())
            os.close(write_end)
            os._exit(0)
        os.close(write_end)
        exit_code = wait_for_child(pid, 8)
        report = os.read(read_end, 65536).decode() or "{}"
        mb.shutdown()
        print(json.dumps({"child": json.loads(report), "child_exit": exit_code}), flush=True)
        os._exit(0)
        """
    )
    outcome = run_child(code, timeout=25)
    assert outcome["child"].get("submit") in ("settled", "refused"), (
        f"submit_job in a forked child neither settled nor was refused within 3 s: {outcome}"
    )


@needs_fork
def test_a_fork_pool_whose_workers_call_a_sync_batch_function_returns_the_results() -> None:
    code = textwrap.dedent(
        """
        import json, multiprocessing, os
        import microbatching

        @microbatching.batch(batch_size=8, batch_interval=0.01)
        def square(items):
            return [x * x for x in items]

        def call(x):
            return square(x)

        assert square(3) == 9  # the decorator's batcher now runs in the parent
        pool = multiprocessing.get_context("fork").Pool(2)
        try:
            outcome = {"results": pool.map_async(call, range(6)).get(timeout=5)}
        except multiprocessing.TimeoutError:
            outcome = {"results": "hung"}
        pool.terminate()
        print(json.dumps(outcome), flush=True)
        os._exit(0)
        """
    )
    outcome = run_child(code, timeout=25)
    assert outcome["results"] == [0, 1, 4, 9, 16, 25], (
        f"a fork Pool calling a sync @batch function did not return within 5 s: {outcome}"
    )


# -- BaseExceptions from event handlers --------------------------------------------------------

_HANDLER_EVENTS = [
    "job_added",
    "batch_started",
    "batch_completed",
    "batch_failed",
    "job_completed",
    "job_retrying",
    "job_failed",
    "shutdown_started",
    "shutdown_completed",
    "error",
]
_BASE_EXCEPTIONS = ["SystemExit", "KeyboardInterrupt", "GeneratorExit"]

_HANDLER_CASES = """
import json, os, threading, time, logging
from concurrent.futures import wait
from microbatching import Job, MicroBatching, RetryPolicy

logging.disable(logging.CRITICAL)  # the handlers' errors are expected here
threading.excepthook = lambda args: None  # and so are loop threads dying of them
import sys
EVENTS = sys.argv[1:]
EXCEPTIONS = {
    "SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit,
}

def process(jobs):
    if any(job.data == "raise" for job in jobs):
        raise ValueError("the whole batch fails")
    return [ValueError("this slot fails") if job.data == "slot" else job.data for job in jobs]

def case(event, exc_name, results):
    mb = MicroBatching(
        None, process, batch_size=1, batch_interval=0.01,
        retry=RetryPolicy(max_attempts=2, base_delay=0.01, jitter=0),
    )
    fired = threading.Event()

    def handler(*args):
        if not fired.is_set():
            fired.set()
            raise EXCEPTIONS[exc_name]("raised by a %s handler" % event)

    mb.on(event, handler)
    if event == "error":  # "error" fires when another handler raises an Exception
        def failing(job, result):
            raise ValueError("a plain handler error")
        mb.on("job_completed", failing)
    outcome = {"fired": False, "submit": "ok"}
    handles = []
    try:
        for data in ("ok", "slot", "raise"):
            handles.append(mb.submit_job(Job(data, data)))
    except BaseException as exc:
        outcome["submit"] = "%s: %s" % (type(exc).__name__, exc)
    done, _ = wait(handles, timeout=2)
    outcome["settled_before_shutdown"] = len(done)
    finished = {}

    def shut_down():
        try:
            mb.shutdown()
            finished["shutdown"] = "returned"
        except BaseException as exc:
            finished["shutdown"] = "raised %s: %s" % (type(exc).__name__, exc)

    closer = threading.Thread(target=shut_down, daemon=True)
    closer.start()
    closer.join(2)
    outcome["shutdown"] = finished.get("shutdown", "hung")
    outcome["settled"] = sum(handle.done() for handle in handles)
    outcome["handles"] = len(handles)
    outcome["state"] = mb.state.value
    outcome["fired"] = fired.is_set()
    if outcome["shutdown"] == "returned":
        outcome["pending"] = mb.stats().pending
    results["%s/%s" % (event, exc_name)] = outcome

results = {}
threads = [
    threading.Thread(target=case, args=(event, name, results), daemon=True)
    for event in EVENTS for name in EXCEPTIONS
]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(10)
print(json.dumps(results), flush=True)
os._exit(0)
"""


@pytest.fixture(scope="module")
def handler_outcomes() -> dict[str, Any]:
    """Every event x exception case, run side by side in one child interpreter (each its own batcher)."""
    return run_child(_HANDLER_CASES, 25, *_HANDLER_EVENTS)


@pytest.mark.parametrize("exc_name", _BASE_EXCEPTIONS)
@pytest.mark.parametrize("event", _HANDLER_EVENTS)
def test_a_handler_raising_a_base_exception_does_not_wedge_the_batcher(
    handler_outcomes: dict[str, Any], event: str, exc_name: str
) -> None:
    outcome = handler_outcomes[f"{event}/{exc_name}"]
    assert outcome["fired"], f"the scenario never emitted {event!r}: {outcome}"
    assert outcome["submit"] == "ok", outcome
    assert outcome["shutdown"] == "returned", (
        f"a {event!r} handler raising {exc_name}: shutdown() did not return normally: {outcome}"
    )
    assert outcome["settled"] == outcome["handles"], (
        f"a {event!r} handler raising {exc_name}: only {outcome['settled']} of {outcome['handles']} "
        f"handles settled: {outcome}"
    )
    assert outcome["state"] == "closed", outcome
    assert outcome["pending"] == 0, outcome


# -- SystemExit / KeyboardInterrupt from the processor, with and without batch_timeout ---------------

_INTERRUPT_CASES = """
import asyncio, json, os, threading, logging
from concurrent.futures import wait
from microbatching import AsyncMicroBatching, Job, MicroBatching

logging.disable(logging.CRITICAL)
threading.excepthook = lambda args: None
EXCEPTIONS = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}

def describe(error):
    if error is None:
        return "result"
    cause = getattr(error, "cause", None)
    return type(error).__name__ + ("(%s)" % type(cause).__name__ if cause is not None else "")

def case(kind, flavour, exc_name, batch_timeout, results):
    exc = EXCEPTIONS[exc_name]

    def sync_processor(jobs):
        raise exc()

    async def async_processor(jobs):
        raise exc()

    processor = sync_processor if flavour == "sync" else async_processor
    options = dict(batch_size=10, batch_interval=0.01, retry=None, batch_timeout=batch_timeout)
    outcome = {}
    if kind == "MicroBatching":
        mb = MicroBatching(None, processor, **options)
        handles = [mb.submit_job(Job(i, i)) for i in range(2)]
        wait(handles, timeout=2)
        outcome["jobs"] = [describe(h.exception(timeout=0)) if h.done() else "pending" for h in handles]
        finished = {}

        def shut_down():
            try:
                mb.shutdown()
                finished["shutdown"] = "returned"
            except BaseException as error:
                finished["shutdown"] = "raised " + type(error).__name__

        closer = threading.Thread(target=shut_down, daemon=True)
        closer.start()
        closer.join(2)
        outcome["shutdown"] = finished.get("shutdown", "hung")
    else:
        futures = []

        async def main():
            async with AsyncMicroBatching(None, processor, **options) as mb:
                futures.extend(mb.submit_job_nowait(Job(i, i)) for i in range(2))
                await asyncio.wait(futures, timeout=2)

        try:
            asyncio.run(main())
            outcome["asyncio.run"] = "returned"
        except BaseException as error:
            outcome["asyncio.run"] = "raised " + type(error).__name__
        outcome["jobs"] = [
            "pending" if not f.done() else "cancelled" if f.cancelled() else describe(f.exception())
            for f in futures
        ]
    results["%s/%s/%s/%s" % (kind, flavour, exc_name, batch_timeout)] = outcome

results = {}
threads = [
    threading.Thread(target=case, args=(kind, flavour, name, timeout, results), daemon=True)
    for kind in ("MicroBatching", "AsyncMicroBatching")
    for flavour in ("sync", "async")
    for name in EXCEPTIONS
    for timeout in (None, 5.0)
]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(10)
print(json.dumps(results), flush=True)
os._exit(0)
"""


@pytest.fixture(scope="module")
def interrupt_outcomes() -> dict[str, Any]:
    return run_child(_INTERRUPT_CASES, timeout=25)


@pytest.mark.parametrize("exc_name", ["SystemExit", "KeyboardInterrupt"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("kind", ["MicroBatching", "AsyncMicroBatching"])
def test_a_processor_raising_an_interrupt_behaves_the_same_with_batch_timeout(
    interrupt_outcomes: dict[str, Any], kind: str, flavour: str, exc_name: str
) -> None:
    """What happens without batch_timeout (today, by design) must happen with it too.

    Without it the jobs fail with JobFailedError (the interrupt as cause); MicroBatching's
    shutdown returns; on AsyncMicroBatching an ``async def`` processor's interrupt then
    stops the caller's ``asyncio.run`` (it is re-raised on the caller's own loop), a sync
    processor's does not.
    """
    expected: dict[str, Any] = {"jobs": [f"JobFailedError({exc_name})"] * 2}
    if kind == "MicroBatching":
        expected["shutdown"] = "returned"
    else:
        expected["asyncio.run"] = "returned" if flavour == "sync" else f"raised {exc_name}"
    without = interrupt_outcomes[f"{kind}/{flavour}/{exc_name}/None"]
    with_timeout = interrupt_outcomes[f"{kind}/{flavour}/{exc_name}/5.0"]
    assert without == expected, f"without batch_timeout: {without}"
    assert with_timeout == expected, f"with batch_timeout=5: {with_timeout}, without: {without}"


# -- a second shutdown ends a stuck graceful one ------------------------------------------------------


@pytest.mark.parametrize("second", ["timeout", "cancel"])
def test_a_second_shutdown_with_timeout_or_cancel_ends_a_graceful_shutdown_stuck_on_the_processor(
    second: str,
) -> None:
    release = threading.Event()
    started = threading.Event()

    def stuck(jobs: list[Job[Any]]) -> list[Any]:
        release.wait(30)
        return [job.data for job in jobs]

    mb = MicroBatching(None, stuck, batch_interval=0.01)
    mb.on("batch_started", lambda batch: started.set())
    handle = mb.submit_job(Job(1, 1))
    assert started.wait(5)
    first = threading.Thread(target=mb.shutdown, daemon=True)
    first.start()
    deadline = time.monotonic() + 2
    while mb.state is not State.CLOSING and time.monotonic() < deadline:
        time.sleep(0.01)
    outcome: dict[str, Any] = {}

    def second_shutdown() -> None:
        began = time.monotonic()
        try:
            if second == "timeout":
                mb.shutdown(timeout=0.5)
            else:
                mb.shutdown(cancel=True)
        except BaseException as exc:
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - began

    closer = threading.Thread(target=second_shutdown, daemon=True)
    closer.start()
    try:
        closer.join(3)
        assert not closer.is_alive(), (
            f"shutdown({second}) called while a graceful shutdown waits for a stuck processor did "
            "not return within 3 s"
        )
        assert "error" not in outcome, outcome
        assert outcome["elapsed"] < 2, outcome
        first.join(2)
        assert not first.is_alive(), "the first, graceful shutdown() is still stuck"
        assert handle.done(), "the stuck job's handle never settled"
        assert isinstance(handle.exception(timeout=0), JobCancelledError), handle.exception(timeout=0)
    finally:
        release.set()
        first.join(5)
        closer.join(5)


@pytest.mark.parametrize("second", ["timeout", "cancel"])
def test_a_second_async_shutdown_with_timeout_or_cancel_ends_a_graceful_shutdown_stuck_on_the_processor(
    second: str,
) -> None:
    async def main() -> None:
        release = asyncio.Event()
        started = asyncio.Event()

        async def stuck(jobs: list[Job[Any]]) -> list[Any]:
            await release.wait()
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, stuck, batch_interval=0.01)
        mb.on("batch_started", lambda batch: started.set())
        mb.start()
        future = mb.submit_job_nowait(Job(1, 1))
        await asyncio.wait_for(started.wait(), 5)
        first = asyncio.ensure_future(mb.shutdown())
        await asyncio.sleep(0.05)
        began = time.monotonic()
        try:
            call = mb.shutdown(timeout=0.5) if second == "timeout" else mb.shutdown(cancel=True)
            try:
                await asyncio.wait_for(call, 3)
                returned = True
            except asyncio.TimeoutError:
                returned = False
            assert returned, (
                f"shutdown({second}) awaited while a graceful shutdown waits for a stuck processor "
                "did not return within 3 s"
            )
            assert time.monotonic() - began < 2
            await asyncio.wait_for(asyncio.shield(first), 2)
            assert future.done()
            assert isinstance(future.exception(), JobCancelledError), future.exception()
        finally:
            release.set()
            await asyncio.wait_for(asyncio.gather(first, return_exceptions=True), 5)
            if future.done() and not future.cancelled():
                future.exception()

    asyncio.run(main())


# -- max_pending waiters on an encoding queue ---------------------------------------------------------


def test_a_waiter_whose_submit_fails_to_encode_passes_the_wake_up_on(tmp_path: Any) -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def process(jobs: list[Job[Any]]) -> list[Any]:
            if any(job.data == "hold" for job in jobs):
                await gate.wait()
            return [job.data for job in jobs]

        queue = SQLiteQueue(tmp_path / "q.db")
        async with AsyncMicroBatching(queue, process, batch_interval=0.01, max_pending=1, retry=None) as mb:
            holding = mb.submit_job_nowait(Job(1, "hold"))
            unencodable = asyncio.ensure_future(mb.submit_job(Job(2, object())))
            healthy = asyncio.ensure_future(mb.submit_job(Job(3, "healthy")))
            for _ in range(5):
                await asyncio.sleep(0)  # both are waiting for room now, the unencodable one first
            gate.set()
            assert await asyncio.wait_for(holding, 5) == "hold"
            with pytest.raises(SerializationError):
                await asyncio.wait_for(unencodable, 5)
            try:
                future: asyncio.Future[Any] | None = await asyncio.wait_for(healthy, 3)
            except asyncio.TimeoutError:
                future = None
            assert future is not None, (
                "the second waiter never got in: the woken waiter's submit failed and did not pass "
                f"the wake-up on (pending={mb.stats().pending})"
            )
            assert await asyncio.wait_for(future, 5) == "healthy"

    asyncio.run(main())


# -- a blocking submit from the loop thread or the processor at max_pending ----------------------------

_BLOCKING_SUBMIT_CASES = """
import json, os, threading, time
from microbatching import Job, MicroBatching

PLACES = ["job_added", "batch_started", "job_completed", "processor"]

def case(place, results):
    outcome = {}
    done = threading.Event()
    holder = {}

    def try_submit():
        began = time.monotonic()
        try:
            holder["mb"].submit_job(Job("inner", 0))  # block=True, no timeout
            outcome["submit"] = "accepted"
        except BaseException as exc:
            outcome["submit"] = "raised"
            outcome["error"] = "%s: %s" % (type(exc).__name__, exc)
        outcome["elapsed"] = time.monotonic() - began
        done.set()

    def process(jobs):
        if place == "processor" and any(job.id == "outer" for job in jobs):
            try_submit()
        return [job.data for job in jobs]

    mb = holder["mb"] = MicroBatching(None, process, batch_interval=0.01, max_pending=1)
    if place != "processor":
        mb.once(place, lambda *args: try_submit())
    mb.submit_job(Job("outer", 1))
    outcome["finished"] = done.wait(3)
    results[place] = outcome

results = {}
threads = [threading.Thread(target=case, args=(place, results), daemon=True) for place in PLACES]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(10)
print(json.dumps(results), flush=True)
os._exit(0)
"""


@pytest.fixture(scope="module")
def blocking_submit_outcomes() -> dict[str, Any]:
    return run_child(_BLOCKING_SUBMIT_CASES, timeout=25)


@pytest.mark.parametrize("place", ["job_added", "batch_started", "job_completed", "processor"])
def test_a_blocking_submit_from_a_handler_or_the_processor_at_max_pending_is_refused_at_once(
    blocking_submit_outcomes: dict[str, Any], place: str
) -> None:
    outcome = blocking_submit_outcomes[place]
    where = "the sync processor" if place == "processor" else f"a {place!r} handler"
    assert outcome["finished"], (
        f"a blocking submit_job from {where} at max_pending deadlocked (no answer within 3 s)"
    )
    assert outcome["submit"] == "raised", outcome
    assert outcome["elapsed"] < 1, outcome
    assert any(word in outcome["error"].lower() for word in ("deadlock", "itself")), outcome


# -- results that are not what they claim -------------------------------------------------------------


class _ShortSequence(Sequence[Any]):
    """Claims ``claimed`` items, but iteration stops after the ones it really has."""

    def __init__(self, items: list[Any], claimed: int) -> None:
        self._items, self._claimed = items, claimed

    def __len__(self) -> int:
        return self._claimed

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._items[index]
        if index >= len(self._items):
            raise IndexError(index)
        return self._items[index]


def test_a_result_sequence_shorter_than_its_len_settles_every_handle_and_keeps_stats_consistent() -> None:
    def process(jobs: list[Job[Any]]) -> _ShortSequence:
        return _ShortSequence([job.data for job in jobs][:-1], len(jobs))

    with MicroBatching(None, process, batch_size=3, batch_interval=0.01, retry=None) as mb:
        handles = [mb.submit_job(Job(i, i)) for i in range(3)]
        _, pending = wait(handles, timeout=3)
        assert not pending, (
            f"handles of jobs {sorted(h.job.id for h in pending)} never settled: the processor's "
            "results ran out before their len()"
        )
    assert handles[2].exception(timeout=0) is not None, "the job without a result did not fail"
    stats = mb.stats()
    completed = sum(handle.exception(timeout=0) is None for handle in handles)
    assert (stats.completed, stats.failed + stats.cancelled) == (completed, 3 - completed), stats
    assert stats.pending == 0, stats


def test_a_numpy_array_of_the_right_length_is_accepted_as_the_results() -> None:
    numpy = pytest.importorskip("numpy")

    with MicroBatching(
        None, lambda jobs: numpy.array([job.data * 2 for job in jobs]), batch_size=3, retry=None
    ) as mb:
        handles = [mb.submit_job(Job(i, i)) for i in range(3)]
        outcomes = []
        for handle in handles:
            error = handle.exception(timeout=5)
            outcomes.append(repr(error) if error is not None else handle.result(timeout=0))
    assert outcomes == [0, 2, 4], outcomes


# -- cancellation ---------------------------------------------------------------------------------


def test_a_cancelled_job_resubmitted_is_processed_once_and_its_cancel_is_counted() -> None:
    seen: list[Any] = []

    def process(jobs: list[Job[Any]]) -> list[Any]:
        seen.extend(job.id for job in jobs)
        return [job.data for job in jobs]

    mb = MicroBatching(None, process, batch_size=10, batch_interval=9)
    job = Job("J", 1)
    first = mb.submit_job(job)
    assert first.cancel()
    second = mb.submit_job(job)
    mb.shutdown()
    assert second.result(timeout=5) == 1
    assert seen == ["J"], f"the job was processed {len(seen)} times: {seen}"
    stats = mb.stats()
    assert (stats.completed, stats.cancelled, stats.pending) == (1, 1, 0), stats
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled, stats


def test_a_cancelled_job_resubmitted_on_the_async_batcher_is_processed_once() -> None:
    async def main() -> None:
        seen: list[Any] = []

        async def process(jobs: list[Job[Any]]) -> list[Any]:
            seen.extend(job.id for job in jobs)
            return [job.data for job in jobs]

        mb = AsyncMicroBatching(None, process, batch_size=10, batch_interval=9)
        mb.start()
        job = Job("J", 1)
        mb.submit_job_nowait(job).cancel()
        second = mb.submit_job_nowait(job)
        await asyncio.wait_for(mb.shutdown(), 5)
        assert await asyncio.wait_for(second, 5) == 1
        assert seen == ["J"], f"the job was processed {len(seen)} times: {seen}"
        stats = mb.stats()
        assert (stats.completed, stats.cancelled, stats.pending) == (1, 1, 0), stats

    asyncio.run(main())


def test_a_job_cancelled_before_its_batch_starts_gets_a_job_failed_event() -> None:
    events: list[tuple[Any, ...]] = []
    in_flight = {"count": 0}

    def added(job: Job[Any]) -> None:
        in_flight["count"] += 1

    def completed(job: Job[Any], result: Any) -> None:
        in_flight["count"] -= 1
        events.append(("completed", job.id))

    def failed(job: Job[Any], error: BaseException) -> None:
        in_flight["count"] -= 1
        events.append(("failed", job.id, type(error)))

    mb = MicroBatching(None, echo, batch_size=10, batch_interval=9)
    mb.on("job_added", added)
    mb.on("job_completed", completed)
    mb.on("job_failed", failed)
    kept = mb.submit_job(Job("kept", 1))
    dropped = mb.submit_job(Job("dropped", 2))
    assert dropped.cancel()
    mb.shutdown()
    assert kept.result(timeout=5) == 1
    assert ("failed", "dropped", JobCancelledError) in events, (
        f"the job cancelled by its submitter got no final event: {events}"
    )
    assert in_flight["count"] == 0, f"an event-driven in-flight tracker ends at {in_flight['count']}"
    assert mb.stats().cancelled == 1


# -- shutdown() awaited inside the processor ---------------------------------------------------------


@pytest.mark.parametrize("batch_timeout", [None, 2.0])
def test_shutdown_awaited_inside_an_async_processor_is_refused_at_once(batch_timeout: float | None) -> None:
    async def main() -> None:
        outcome: dict[str, Any] = {}
        holder: dict[str, AsyncMicroBatching] = {}

        async def process(jobs: list[Job[Any]]) -> list[Any]:
            began = time.monotonic()
            try:
                await holder["mb"].shutdown()
                outcome["shutdown"] = "returned"
            except Exception as exc:
                outcome["shutdown"] = exc
            outcome["elapsed"] = time.monotonic() - began
            return [job.data for job in jobs]

        mb = holder["mb"] = AsyncMicroBatching(
            None, process, batch_interval=0.01, batch_timeout=batch_timeout, retry=None
        )
        mb.start()
        future = mb.submit_job_nowait(Job(1, 1))
        try:
            await asyncio.wait_for(asyncio.wait([future]), 5)
            assert isinstance(outcome.get("shutdown"), RuntimeError), (
                f"await shutdown() inside the processor (batch_timeout={batch_timeout}) was not refused "
                f"with RuntimeError: {outcome or 'it never returned'}; the job got {future.exception()!r}"
            )
            assert outcome["elapsed"] < 1, outcome
            assert future.result() == 1
        finally:
            await asyncio.wait_for(mb.shutdown(cancel=True), 5)

    asyncio.run(main())


# -- weights that are not numbers one can add up -------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, -math.inf, -1.0], ids=["nan", "-inf", "negative"])
def test_a_nan_or_negative_weight_fails_its_job_and_the_others_batch_within_the_limit(bad: float) -> None:
    batches: list[list[float]] = []

    def process(jobs: list[Job[float]]) -> list[float]:
        batches.append([job.data for job in jobs])
        return [job.data for job in jobs]

    mb = MicroBatching(
        None,
        process,
        batch_size=100,
        batch_interval=9,
        max_batch_weight=10,
        weight=lambda job: job.data,
        retry=None,
    )
    handles = [mb.submit_job(Job(i, weight)) for i, weight in enumerate([bad, 6, 6, 6, 6])]
    mb.shutdown()  # flushes the last partial batch
    _, pending = wait(handles, timeout=5)
    assert not pending
    error = handles[0].exception(timeout=0)
    assert error is not None, f"the job weighing {bad} was accepted; batches: {batches}"
    assert "weight" in str(error).lower(), f"the error does not say what is wrong: {error!r}"
    assert all(handle.result(timeout=0) == 6 for handle in handles[1:])
    assert all(sum(batch) <= 10 for batch in batches), (
        f"a weight of {bad} switched off max_batch_weight=10: batches {batches}"
    )
