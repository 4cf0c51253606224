"""JobResult: a concurrent.futures.Future that builds its lock only when someone waits."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from microbatching import Job, JobResult, MicroBatching


def _later(delay: float, action: Any) -> None:
    threading.Timer(delay, action).start()


def test_result_waits_for_a_value_set_from_another_thread() -> None:
    handle = JobResult(Job(1, 1))
    _later(0.05, lambda: handle.set_result("v"))
    assert handle.result(timeout=5) == "v"
    assert handle.done() and not handle.cancelled() and handle.exception() is None


def test_result_raises_the_exception_and_times_out() -> None:
    handle = JobResult(Job(1, 1))
    with pytest.raises(concurrent.futures.TimeoutError):
        handle.result(timeout=0.01)
    handle.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        handle.result(timeout=0)
    assert isinstance(handle.exception(timeout=0), KeyError)


def test_settling_twice_is_refused() -> None:
    handle = JobResult(Job(1, 1))
    handle.set_result(1)
    with pytest.raises(concurrent.futures.InvalidStateError):
        handle.set_result(2)
    watched = JobResult(Job(2, 2))
    assert watched._condition is not None  # the base-class path
    watched.set_result(1)
    with pytest.raises(concurrent.futures.InvalidStateError):
        watched.set_exception(ValueError())


@pytest.mark.parametrize("watched", [False, True])
def test_done_callbacks_run_once_whether_added_before_or_after(watched: bool) -> None:
    handle = JobResult(Job(1, 1))
    if watched:
        _ = handle._condition
    seen: list[str] = []
    handle.add_done_callback(lambda h: seen.append("before"))
    handle.set_result(1)
    handle.add_done_callback(lambda h: seen.append("after"))
    assert seen == ["before", "after"]


@pytest.mark.parametrize("watched", [False, True])
def test_cancel_before_outcome_then_result_raises_cancelled(watched: bool) -> None:
    handle = JobResult(Job(1, 1))
    if watched:
        _ = handle._condition
    seen: list[bool] = []
    handle.add_done_callback(lambda h: seen.append(h.cancelled()))
    assert handle.cancel() is True
    assert handle.cancelled() and handle.done()
    with pytest.raises(concurrent.futures.CancelledError):
        handle.result(timeout=0)
    assert seen == [True]
    done, not_done = concurrent.futures.wait([handle], timeout=1)
    assert done == {handle} and not not_done
    finished = JobResult(Job(2, 2))
    finished.set_result(1)
    assert finished.cancel() is False


def test_concurrent_futures_wait_and_as_completed_accept_handles() -> None:
    handles = [JobResult(Job(i, i)) for i in range(5)]
    handles[0].set_result(0)  # settled before anyone watched
    for i, handle in enumerate(handles[1:], 1):
        _later(0.01 * i, lambda h=handle, i=i: h.set_result(i))
    assert sorted(h.result() for h in concurrent.futures.as_completed(handles, timeout=5)) == [0, 1, 2, 3, 4]
    more = [JobResult(Job(i, i)) for i in range(3)]
    _later(0.05, lambda: more[1].set_exception(RuntimeError("x")))
    done, _ = concurrent.futures.wait(more, timeout=5, return_when=concurrent.futures.FIRST_EXCEPTION)
    assert done == {more[1]}


def test_many_threads_waiting_on_one_handle_all_wake() -> None:
    handle = JobResult(Job(1, 1))
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(handle.result(timeout=5))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    handle.set_result("all")
    for thread in threads:
        thread.join(5)
    assert results == ["all"] * 8


def test_batcher_handles_work_with_as_completed() -> None:
    with MicroBatching(
        None, lambda jobs: [j.data * 2 for j in jobs], batch_size=7, batch_interval=0.01
    ) as mb:
        handles = [mb.submit_job(Job(i, i)) for i in range(50)]
        got = sorted(h.result() for h in concurrent.futures.as_completed(handles, timeout=10))
    assert got == [i * 2 for i in range(50)]


@pytest.mark.parametrize("watched", [False, True])
def test_cancelling_twice_is_true_twice_and_runs_callbacks_once(watched: bool) -> None:
    handle = JobResult(Job(1, 1))
    if watched:
        _ = handle._condition
    calls: list[bool] = []
    handle.add_done_callback(lambda h: calls.append(h.cancelled()))
    assert handle.cancel() is True
    assert handle.cancel() is True
    assert calls == [True]


def test_a_raising_callback_on_a_settled_handle_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    handle = JobResult(Job(1, 1))
    handle.set_result(1)
    handle.add_done_callback(lambda h: 1 / 0)
    assert "done callback" in caplog.text


def test_a_batch_settles_its_handles_at_once_as_each_would_alone() -> None:
    """set_results: fresh handles, a watched one, one with a callback, a cancelled one, no handle."""
    from microbatching._job import new_handle, set_results

    fresh = JobResult(Job(1, 1))
    made = new_handle()
    made.job = None
    watched = JobResult(Job(2, 2))
    woken: list[Any] = []
    waiter = threading.Thread(target=lambda: woken.append(watched.result(timeout=5)))
    waiter.start()
    while watched._cond is None:  # the waiter built the handle's condition: it is watched now
        time.sleep(0.001)
    called = JobResult(Job(3, 3))
    seen: list[Any] = []
    called.add_done_callback(lambda handle: seen.append(handle.result()))
    cancelled = JobResult(Job(4, 4))
    assert cancelled.cancel()
    set_results([fresh, made, watched, called, cancelled, None], ["a", "b", "c", "d", "e", "f"])
    waiter.join(5)
    assert (fresh.result(timeout=0), made.result(timeout=0), woken, seen) == ("a", "b", ["c"], ["d"])
    assert cancelled.cancelled()
    assert concurrent.futures.wait([fresh, made, watched, called], timeout=0).not_done == set()


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="before Python 3.11 every instance of a class without __slots__ has a dict object of its own",
)
def test_settled_handles_carry_no_dict_of_their_own() -> None:
    """Every attribute a handle stores has its place in the class's shared keys: no dict per handle.

    In a fresh interpreter, where no handle has stored its attributes before the batcher runs.
    """
    script = """
import gc
from microbatching import Job, MicroBatching
with MicroBatching(None, lambda jobs: [job.data for job in jobs], batch_size=50, retry=None) as mb:
    handles = [mb.submit_job(Job(None, i)) for i in range(2000)]
    assert [handle.result(timeout=10) for handle in handles] == list(range(2000))
print(sum(any(type(ref) is dict for ref in gc.get_referents(handle)) for handle in handles))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "0", f"{out.stdout.strip()} of 2000 settled handles grew a dict"
