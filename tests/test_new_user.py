"""What a new user runs into: misuse is refused loudly, with what to do instead."""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from conftest import vrun

from microbatching import AsyncMicroBatching, Job, MicroBatching, RetryPolicy


def echo(jobs: list[Job[Any]]) -> list[Any]:
    return [job.data for job in jobs]


async def aecho(jobs: list[Job[Any]]) -> list[Any]:
    return [job.data for job in jobs]


def test_job_with_only_an_id_is_refused_naming_both_ways() -> None:
    with pytest.raises(TypeError, match=r"Job\('hello'\) gives only an id.*Job\(data='hello'\)"):
        Job("hello")
    assert Job(data="hello").data == "hello"
    assert Job(1, None).data is None


def test_a_batch_interval_that_looks_like_milliseconds_warns() -> None:
    with pytest.warns(UserWarning, match=r"batch_interval is in seconds: 50.*batch_interval=0.05"):
        MicroBatching(None, echo, batch_interval=50)


def test_an_option_typo_names_the_batcher_and_the_closest_option() -> None:
    with pytest.raises(
        TypeError,
        match=r"^AsyncMicroBatching\(\) got an unknown option 'max_pendng'; did you mean 'max_pending'",
    ):
        AsyncMicroBatching(None, echo, max_pendng=3)


def test_a_processor_passed_where_the_queue_goes_is_named() -> None:
    with pytest.raises(TypeError, match=r"takes the queue first.*MicroBatching\(None, processor\)"):
        MicroBatching(echo)


def test_a_processor_class_instead_of_an_instance_is_refused_at_once() -> None:
    class Processor:
        def process_batch(self, jobs: list[Job[Any]]) -> list[Any]:
            return echo(jobs)

    with pytest.raises(
        TypeError, match=r"processor Processor is a class: pass an instance \(Processor\(\)\)"
    ):
        MicroBatching(None, Processor)


def test_programming_errors_are_not_retried_by_default() -> None:
    attempts: list[int] = []

    def broken(jobs: list[Job[Any]]) -> list[Any]:
        attempts.extend(job.attempts for job in jobs)
        return [TypeError("unsupported operand") for _ in jobs]

    with MicroBatching(None, broken, batch_interval=0.001) as mb, pytest.raises(Exception, match="TypeError"):
        mb.submit_job(Job(1, 1)).result(timeout=5)
    assert attempts == [1]
    assert RetryPolicy(never_retry=()).should_retry(TypeError("x"), 1)


def test_flush_dispatches_the_partial_batch_without_shutting_down() -> None:
    async def main() -> None:
        async with AsyncMicroBatching(None, aecho, batch_size=100, batch_interval=5.0) as mb:
            futures = [mb.submit_job_nowait(Job(i, i)) for i in range(3)]
            await asyncio.sleep(0.1)
            assert not any(f.done() for f in futures)
            started = asyncio.get_running_loop().time()
            mb.flush()
            assert await asyncio.gather(*futures) == [0, 1, 2]
            assert asyncio.get_running_loop().time() - started < 1.0  # not the 5 s interval
            assert mb.stats().batches_by_trigger["flush"] == 1
            assert mb.submit_job_nowait(Job(9, 9)) is not None  # still running

    vrun(main())


def test_flush_from_another_thread_on_the_threaded_batcher() -> None:
    with MicroBatching(None, echo, batch_size=100, batch_interval=5.0) as mb:
        handle = mb.submit_job(Job(1, 1))
        mb.flush()
        assert handle.result(timeout=2) == 1


def test_batch_size_and_interval_can_change_while_running() -> None:
    sizes: list[int] = []

    async def process(jobs: list[Job[Any]]) -> list[Any]:
        sizes.append(len(jobs))
        return [None] * len(jobs)

    async def main() -> None:
        async with AsyncMicroBatching(None, process, batch_size=100, batch_interval=5.0) as mb:
            futures = [mb.submit_job_nowait(Job(i, i)) for i in range(25)]
            mb.batch_size = 10  # the open batch of 25 leaves in batches of at most 10
            mb.batch_interval = 0.01
            assert (mb.batch_size, mb.batch_interval) == (10, 0.01)
            await asyncio.gather(*futures)
        with pytest.raises(ValueError, match="batch_size"):
            mb.batch_size = 0

    vrun(main())
    assert sizes == [10, 10, 5]


def test_submit_job_nowait_from_another_thread_is_refused_pointing_to_microbatching() -> None:
    async def main() -> None:
        async with AsyncMicroBatching(None, aecho, batch_interval=0.05) as mb:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                failure = pool.submit(mb.submit_job_nowait, Job(1, 1)).exception(timeout=5)
            assert isinstance(failure, RuntimeError)
            assert "use MicroBatching" in str(failure)
            assert mb.stats().pending == 0
            assert await mb.submit_job_nowait(Job(2, 2)) == 2  # the loop's own thread still works

    asyncio.run(main())


def test_a_batcher_used_on_a_second_event_loop_says_what_happened() -> None:
    mb = AsyncMicroBatching(None, aecho, batch_interval=0.001)

    async def first() -> Any:
        return await mb.submit_job_nowait(Job(1, 1))

    assert asyncio.run(first()) == 1

    async def second() -> None:
        with pytest.raises(RuntimeError, match="started on another event loop"):
            mb.submit_job_nowait(Job(2, 2))

    asyncio.run(second())


def test_an_event_loop_ending_before_shutdown_warns_how_many_jobs_never_finished() -> None:
    code = textwrap.dedent(
        """
        import asyncio
        from microbatching import AsyncMicroBatching, Job

        async def main():
            mb = AsyncMicroBatching(None, lambda jobs: [None] * len(jobs), batch_interval=5)
            for i in range(10):
                mb.submit_job_nowait(Job(i, i))

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning: the event loop ended with 10 accepted jobs" in result.stderr
    assert "await mb.shutdown()" in result.stderr


def test_a_submit_and_wait_loop_gets_batches_of_one_each_waiting_the_interval() -> None:
    # Documented in getting-started: waiting for each result before the next submit
    # defeats batching; this pins the behaviour the docs describe.
    sizes: list[int] = []

    def process(jobs: list[Job[Any]]) -> list[Any]:
        sizes.append(len(jobs))
        return [None] * len(jobs)

    with MicroBatching(None, process, batch_interval=0.05) as mb:
        started = time.monotonic()
        for i in range(3):
            mb.submit_job(Job(i, i)).result(timeout=5)
        elapsed = time.monotonic() - started
    assert sizes == [1, 1, 1]
    assert elapsed >= 3 * 0.05 - 0.01


def test_ctrl_c_in_a_script_says_it_is_draining_and_a_second_stops_at_once() -> None:
    code = textwrap.dedent(
        """
        import sys, time
        from microbatching import Job, MicroBatching

        def slow(jobs):
            time.sleep(30)
            return [None] * len(jobs)

        mb = MicroBatching(None, slow, batch_interval=0.01)
        handles = [mb.submit_job(Job(i, i)) for i in range(3)]
        print("submitted", flush=True)
        time.sleep(60)  # interrupted here
        """
    )
    import signal

    script = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert script.stdout is not None and script.stderr is not None
    try:
        assert script.stdout.readline().strip() == "submitted"
        script.send_signal(signal.SIGINT)  # the script ends; the exit hook drains
        said = ""
        while "finishing" not in said and (line := script.stderr.readline()):
            said += line
        assert "finishing 3 accepted jobs before exit" in said
        script.send_signal(signal.SIGINT)  # and stops at once
        started = time.monotonic()
        code_seen = script.wait(timeout=10)
        rest = script.stderr.read()
        assert code_seen == 130, rest
        assert time.monotonic() - started < 5
        assert "stopped at once" in rest
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
        script.stdout.close()
        script.stderr.close()
