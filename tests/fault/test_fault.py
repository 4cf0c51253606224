"""Fault tests: real worker processes, killed and restarted, on every bundled durable queue.

Each test prints its figures (run with -s) and appends them as JSON lines to
/tmp/microbatching-fault-figures.jsonl (MICROBATCHING_FAULT_FIGURES overrides the path).
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import BACKENDS, Backend
from fault_harness import FaultRun, finish, known

BATCH = ("--batch-size", "50", "--batch-interval", "0.01")


@pytest.fixture(params=BACKENDS, ids=[backend.name for backend in BACKENDS])
def fault_run(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultRun]:
    backend: Backend = request.param
    backend.check_available()
    name = f"mb_fault_{uuid.uuid4().hex[:10]}"
    run = FaultRun(tmp_path, request.node.name, backend.url(name, tmp_path))
    yield run
    run.drop()


@pytest.mark.timeout(150)
def test_a_worker_sigkilled_at_random_points_loses_nothing(fault_run: FaultRun) -> None:
    jobs, concurrency = 10_000, 1
    fault_run.enqueue(range(jobs))
    fault_run.env.update(FAULT_SLEEP="0.01", FAULT_SELF_KILL="0.02")
    rng = random.Random(20261129)
    kills = self_kills = runs = 0
    while kills + self_kills < 12:
        runs += 1
        before = fault_run.effect_count()
        worker = fault_run.worker(*BATCH, "--lease", "1", "--max-attempts", "50", "--until-empty")
        while fault_run.effect_count() == before and worker.poll() is None:  # until it is working
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        sent = worker.poll() is None
        if sent:
            worker.send_signal(signal.SIGKILL)
        code = finish(worker)
        if code == -signal.SIGKILL:
            # Killed by us at a random point, or by itself right after a side effect and
            # before the acknowledgement.
            kills += sent
            self_kills += not sent
        else:
            assert code == 0
            break
    final = fault_run.worker(
        *BATCH, "--lease", "1", "--max-attempts", "50", "--until-empty", FAULT_SELF_KILL="0"
    )
    assert finish(final, 120) == 0
    counts = fault_run.counts()
    stats, dead = fault_run.stats()
    lost = jobs - len(counts)
    duplicates = sum(counts.values()) - len(counts)
    window = 50 * (concurrency + 1)  # jobs a worker holds at most: the in-flight bound per kill
    kills += self_kills
    fault_run.report(
        jobs=jobs,
        kills=kills,
        self_kills_after_side_effect=self_kills,
        runs=runs + 1,
        lost=lost,
        duplicates=duplicates,
        duplicate_bound=kills * window,
        max_times_one_job_ran=max(counts.values()),
        left_pending=stats.pending,
        left_leased=stats.in_flight,
        done=stats.done,
        dead=stats.dead,
    )
    assert kills >= 10
    assert lost == 0 and set(counts) == set(range(jobs))
    assert duplicates <= kills * window
    assert (stats.pending, stats.delayed, known(stats.in_flight), stats.dead) == (0, 0, 0, 0)
    assert dead == []
    assert stats.done in (jobs, None)


@pytest.mark.timeout(90)
def test_poison_jobs_are_dead_lettered_and_hold_nobody_back(fault_run: FaultRun) -> None:
    jobs = 5_000
    fault_run.enqueue(range(jobs))
    worker = fault_run.worker(
        *BATCH, "--max-attempts", "5", "--retry-delay", "0.05", "--until-empty", FAULT_POISON_MOD="100"
    )
    assert finish(worker) == 4  # ran the queue empty, with jobs dead-lettered on the way
    effects = fault_run.effects()
    stats, dead = fault_run.stats()
    poison = {i for i in range(jobs) if i % 100 == 0}
    good = [(job_id, attempts, at) for job_id, attempts, at in effects if job_id not in poison]
    good_attempts = {attempts for _, attempts, _ in good}
    first, last_good = min(at for _, _, at in effects), max(at for _, _, at in good)
    poison_done = max(at for job_id, _, at in effects if job_id in poison)
    fault_run.report(
        jobs=jobs,
        poison=len(poison),
        dead=len(dead),
        done=stats.done,
        lost=0,
        duplicates=len(good) - len({j for j, _, _ in good}),
        good_attempts=sorted(good_attempts),
        good_jobs_all_processed_after_s=round(last_good - first, 3),
        poison_jobs_dead_after_s=round(poison_done - first, 3),
    )
    assert {d.job_id for d in dead} == poison
    assert {d.attempts for d in dead} == {5}
    assert all(d.error == f"ValueError: poison {d.job_id}" for d in dead)
    assert stats.done in (jobs - len(poison), None)
    assert (stats.pending, stats.delayed, known(stats.in_flight)) == (0, 0, 0)
    # Not held back: every good job ran exactly once, at its first attempt, in the batch it
    # shared with a poison job (partial failure), never waiting for the poison's retries.
    assert sorted(job_id for job_id, _, _ in good) == sorted(set(range(jobs)) - poison)
    assert good_attempts == {1}


@pytest.mark.timeout(90)
def test_a_job_that_kills_its_worker_reaches_the_dead_letters(fault_run: FaultRun) -> None:
    jobs, killer = 300, 137
    fault_run.enqueue(range(jobs))
    crashes = 0
    for _ in range(20):
        worker = fault_run.worker(
            "--batch-size",
            "10",
            "--batch-interval",
            "0.01",
            "--lease",
            "0.5",
            "--max-attempts",
            "3",
            "--until-empty",
            FAULT_KILLER=str(killer),
        )
        code = finish(worker)
        if code == 0:
            break
        assert code == 17  # os._exit in the processor
        crashes += 1
    counts = fault_run.counts()
    stats, dead = fault_run.stats()
    fault_run.report(
        jobs=jobs,
        crashes=crashes,
        dead=[(d.job_id, d.attempts) for d in dead],
        lost=jobs - 1 - len(counts),
        duplicates=sum(counts.values()) - len(counts),
        done=stats.done,
    )
    assert crashes == 3
    assert [(d.job_id, d.attempts) for d in dead] == [(killer, 3)]
    assert "WorkerLost" in dead[0].error and "attempt 3" in dead[0].error
    assert set(counts) == set(range(jobs)) - {killer}  # its batch-mates were not dragged along
    assert stats.done in (jobs - 1, None)
    assert (stats.pending, stats.delayed, known(stats.in_flight)) == (0, 0, 0)


@pytest.mark.timeout(60)
def test_sigterm_with_batches_in_flight_drains_cleanly(fault_run: FaultRun) -> None:
    jobs = 3_000
    fault_run.enqueue(range(jobs))
    worker = fault_run.worker(*BATCH, "--concurrency", "2", FAULT_SLEEP="0.2")
    while fault_run.effect_count() == 0 and worker.poll() is None:
        time.sleep(0.005)
    time.sleep(0.3)  # batches are in flight (each takes 0.2 s)
    worker.send_signal(signal.SIGTERM)
    code = finish(worker)
    counts = fault_run.counts()
    stats, _ = fault_run.stats()
    fault_run.report(
        jobs=jobs,
        processed_before_exit=len(counts),
        exit_code=code,
        duplicates=sum(counts.values()) - len(counts),
        left_leased=stats.in_flight,
        done=stats.done,
        pending=stats.pending,
    )
    assert code == 0
    assert known(stats.in_flight) == 0
    assert max(counts.values()) == 1
    assert stats.done in (len(counts), None)  # everything it processed was acknowledged
    assert stats.pending == jobs - len(counts) > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [2, 4])
def test_several_workers_on_one_queue_do_every_job_exactly_once(fault_run: FaultRun, workers: int) -> None:
    jobs = 8_000
    fault_run.enqueue(range(jobs))
    processes = [fault_run.worker(*BATCH, "--until-empty", FAULT_SLEEP="0.002") for _ in range(workers)]
    codes = [finish(process, 100) for process in processes]
    counts = fault_run.counts()
    stats, _ = fault_run.stats()
    per_worker = sorted(path.read_text().count("\n") for path in fault_run.tmp.glob("effects-*.log"))
    fault_run.report(
        jobs=jobs,
        workers=workers,
        lost=jobs - len(counts),
        duplicates=sum(counts.values()) - len(counts),
        jobs_per_worker=per_worker,
        done=stats.done,
    )
    assert codes == [0] * workers
    assert sorted(counts) == list(range(jobs))
    assert set(counts.values()) == {1}
    assert stats.done in (jobs, None)
    assert (stats.pending, stats.delayed, known(stats.in_flight), stats.dead) == (0, 0, 0, 0)


@pytest.mark.timeout(180)
def test_three_workers_one_sigkilled_repeatedly_lose_nothing(fault_run: FaultRun) -> None:
    jobs, window = 5_000, 50 * 2  # a worker holds at most batch_size * (concurrency + 1) jobs
    fault_run.enqueue(range(jobs))
    fault_run.env.update(FAULT_SLEEP="0.03")
    options = (*BATCH, "--lease", "2", "--max-attempts", "50")
    steady = [fault_run.worker(*options, "--until-empty") for _ in range(2)]
    kills = 0
    victim = fault_run.worker(*options)
    rng = random.Random(20261202)
    while any(worker.poll() is None for worker in steady) and kills < 30:
        before = fault_run.effect_count()
        while fault_run.effect_count() == before and victim.poll() is None:  # until it is working
            if all(worker.poll() is not None for worker in steady):
                break  # the others emptied the queue meanwhile
            time.sleep(0.005)
        time.sleep(rng.uniform(0.02, 0.3))
        victim.send_signal(signal.SIGKILL)
        finish(victim)
        kills += 1
        victim = fault_run.worker(*options)
    victim.send_signal(signal.SIGKILL)
    finish(victim)
    kills += 1
    assert [finish(worker, 120) for worker in steady] == [0, 0]
    final = fault_run.worker(*options, "--until-empty")  # what the last kill left leased comes back
    assert finish(final, 120) == 0
    counts = fault_run.counts()
    stats, dead = fault_run.stats()
    lost = jobs - len(counts)
    duplicates = sum(counts.values()) - len(counts)
    fault_run.report(
        jobs=jobs,
        workers=3,
        kills=kills,
        lost=lost,
        duplicates=duplicates,
        duplicate_bound=kills * window,
        left_pending=stats.pending,
        left_leased=stats.in_flight,
        dead=stats.dead,
    )
    assert kills >= 3
    assert lost == 0 and set(counts) == set(range(jobs))
    assert duplicates <= kills * window
    assert (stats.pending, stats.delayed, known(stats.in_flight)) == (0, 0, 0)
    assert dead == []
