"""The worker command line: enqueue, stats, dead-letters, the worker's signals and exit codes."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microbatching.cli import main
from microbatching.queues import redact
from microbatching.queues._registry import scrub

PROCESSORS = '''
import os, time
def echo(jobs):
    return [job.data for job in jobs]
def picky(jobs):
    return [ValueError("no odd numbers") if job.data % 2 else job.data for job in jobs]
def slow(jobs):
    with open(os.environ["MARK"], "a") as f:
        f.write("started\\n")
    time.sleep(float(os.environ.get("SLOW", "1")))
    return [job.data for job in jobs]
class Doubler:
    def process_batch(self, jobs):
        return [job.data * 2 for job in jobs]
'''


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "procs.py").write_text(PROCESSORS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(*args: str) -> int:
    return main(list(args))


def worker(workdir: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "microbatching", "worker", *args],
        cwd=workdir, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def stats(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    capsys.readouterr()
    assert cli("stats", "--json", *args) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_enqueue_from_arguments_and_stdin_into_the_default_queue(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("enqueue", '{"a": 1}', "2", '"three"') == 0
    assert "enqueued 3 jobs on sqlite:///microbatching.db" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("4\n\n[5]\n"))
    assert cli("enqueue") == 0
    assert (workdir / "microbatching.db").exists()
    figures = stats(capsys)
    assert (figures["pending"], figures["done"], figures["dead"]) == (5, 0, 0)


def test_enqueue_refuses_bad_input_and_stores_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("enqueue", "1", "{oops") == 2
    assert "argument 2 is not JSON" in capsys.readouterr().err
    assert cli("enqueue", "--with-ids", '{"data": 1, "id": "a"}', "7") == 2
    assert '{"id": ..., "data": ...}' in capsys.readouterr().err
    assert not (workdir / "microbatching.db").exists()  # nothing stored, not even the queue


def test_worker_until_empty_then_dead_letters_list_requeue_purge(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("enqueue", "--with-ids", *(json.dumps({"id": f"j{i}", "data": i}) for i in range(6))) == 0
    process = worker(workdir, "procs:picky", "--batch-size", "4", "--batch-interval", "0.01",
                     "--max-attempts", "2", "--retry-delay", "0.01", "--until-empty")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 4, err.decode()  # --until-empty, and jobs were dead-lettered
    assert b"stopped after" in err  # a plain log line, not a terminal
    figures = stats(capsys)
    assert (figures["done"], figures["dead"], figures["pending"], figures["in_flight"]) == (3, 3, 0, 0)
    assert cli("dead-letters", "list", "--json") == 0
    dead = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(d["job_id"] for d in dead) == ["j1", "j3", "j5"]
    assert {(d["attempts"], d["error"]) for d in dead} == {(2, "ValueError: no odd numbers")}
    assert cli("dead-letters", "purge") == 2  # neither keys nor --all
    assert cli("dead-letters", "requeue", dead[0]["key"]) == 0
    assert "requeued 1 dead letter\n" in capsys.readouterr().out
    assert cli("dead-letters", "purge", "--all") == 0
    assert "purged 2 dead letters" in capsys.readouterr().out
    figures = stats(capsys)
    assert (figures["pending"], figures["dead"]) == (1, 0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("procs", "package.module:function"), ("procs:nothing", "no attribute 'nothing'"),
     ("missing_module:f", "cannot import 'missing_module'")],
)
def test_worker_usage_errors_exit_2(workdir: Path, spec: str, message: str) -> None:
    process = worker(workdir, spec)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert message in err.decode()


def test_bad_queue_url_exits_2_without_leaking_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("stats", "--queue", "kafka://user:s3cret@host:9092/0") == 2
    err = capsys.readouterr().err
    assert "unsupported queue URL" in err and "s3cret" not in err
    assert redact("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"


def test_drop_says_what_it_would_delete_and_deletes_only_with_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "q.db")
    assert cli("enqueue", "--queue", path, "1", "2", "3") == 0
    capsys.readouterr()
    assert cli("drop", "--queue", path) == 2
    err = capsys.readouterr().err
    assert "holds 3 pending" in err and "nothing was dropped: pass --yes to drop it" in err
    assert cli("stats", "--queue", path) == 0  # still there
    capsys.readouterr()
    assert cli("drop", "--queue", path, "--yes") == 0
    assert "deleted 3 pending, 0 delayed, 0 in flight, 0 dead" in capsys.readouterr().out
    assert cli("stats", "--queue", path) == 2  # gone: nothing left to show
    assert "holds no queue" in capsys.readouterr().err
    assert cli("drop", "--queue", str(tmp_path / "missing.db"), "--yes") == 2  # creates nothing
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()


def test_a_scrubbed_message_keeps_words_that_merely_contain_a_secret() -> None:
    # A user name alone is hidden like a token; it must not eat the scheme it begins.
    url = "postgresql://postgres@127.0.0.1:5432/test"
    message = f"no queue at {url}; user postgres may lack rights; token=postgres"
    assert scrub(message, url) == (
        "no queue at postgresql://***@127.0.0.1:5432/test; user *** may lack rights; token=***"
    )
    assert scrub("auth failed for hunter2!", "nats://hunter2@host:4222") == "auth failed for ***!"


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists()


def test_sigterm_drains_the_batch_in_flight_and_exits_0(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("enqueue", *map(str, range(20))) == 0
    process = worker(workdir, "procs:slow", "--batch-size", "5", "--batch-interval", "0.01",
                     MARK=str(workdir / "mark"), SLOW="0.5")
    wait_for(workdir / "mark")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    figures = stats(capsys)
    # The batch in flight and the one claimed behind it are finished; nothing else is claimed.
    assert (figures["done"], figures["in_flight"], figures["pending"]) == (10, 0, 10)


def test_a_second_sigint_stops_at_once_with_130(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("enqueue", *map(str, range(5))) == 0
    process = worker(workdir, "procs:slow", "--batch-size", "5", "--batch-interval", "0.01", "--lease", "30",
                     MARK=str(workdir / "mark"), SLOW="60")
    wait_for(workdir / "mark")
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "stopping at once" in err.decode()
    figures = stats(capsys)
    assert (figures["done"], figures["in_flight"]) == (0, 5)  # redelivered once the lease runs out


def test_drain_timeout_gives_jobs_back_and_exits_3(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("enqueue", *map(str, range(5))) == 0
    process = worker(workdir, "procs:slow", "--batch-size", "5", "--batch-interval", "0.01",
                     "--drain-timeout", "0.5", MARK=str(workdir / "mark"), SLOW="3")
    wait_for(workdir / "mark")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 3, err.decode()
    assert "given back to the queue" in err.decode()


def test_live_progress_on_a_terminal(workdir: Path) -> None:
    assert cli("enqueue", *map(str, range(20))) == 0
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "microbatching", "worker", "procs:slow", "--batch-size", "5",
         "--batch-interval", "0.01", "--until-empty"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=follower,
        env={**os.environ, "MARK": str(workdir / "mark"), "SLOW": "0.3"},
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=30) == 0
    assert b"\r\x1b[K" in output and b"jobs/s" in output


def test_a_processor_class_is_instantiated(workdir: Path) -> None:
    from microbatching.worker.run import load_processor

    processor = load_processor("procs:Doubler")
    assert type(processor).__name__ == "Doubler"
    assert callable(load_processor("procs:echo"))
