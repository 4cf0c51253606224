"""Does a running worker always recover when its RabbitMQ node is killed and restarted?

``python tools/rabbitmq_restart_loop.py --runs 10 --kills 6``: on a private broker (its
own port and data directory, started and killed here; never the shared one), a worker
(``MicroBatching`` over ``RabbitMQQueue``) processes a stream of puts from a producer
thread; the node is SIGKILLed at a random moment, started again, and the run waits for
the next 200 confirmed jobs to be processed, ``--kills`` times a run.  A run whose jobs
are not processed within 60 s is a stall: the worker's asyncio tasks are printed, with
what its queue and connection hold, and the loop stops.  Prints one line per run and a
total.  Needs ``rabbitmq-server`` and root (the server runs as its own user).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import random
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_rabbitmq import PrivateBroker, _produce, _recording_processor  # the tests' own helpers

from microbatching import MicroBatching
from microbatching.queues.rabbitmq import RabbitMQQueue


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def print_tasks(worker: MicroBatching) -> None:
    """Every task of the worker's loop with its stack: where a stalled worker waits."""
    out, printed = io.StringIO(), threading.Event()

    def dump() -> None:
        for task in asyncio.all_tasks():
            print(task, file=out)
            task.print_stack(file=out)
        printed.set()

    worker._loop.call_soon_threadsafe(dump)
    printed.wait(5)
    print(out.getvalue())


def one_run(kills: int) -> tuple[bool, int]:
    """A run of ``kills`` restarts: (whether the worker kept up, restarts done)."""
    base = Path("/tmp") / f"mb-rabbitmq-{uuid.uuid4().hex[:8]}"  # readable by the server's user
    base.mkdir(mode=0o755)
    broker = PrivateBroker(base)
    broker.start()
    processed, process = _recording_processor(0.002)
    confirmed: list[int] = []
    stop = threading.Event()
    producer = threading.Thread(target=lambda: asyncio.run(_produce(broker.url, "restarts", confirmed, stop)))
    worker = MicroBatching(RabbitMQQueue(broker.url, name="restarts"), process, batch_size=20,
                           batch_interval=0.01)  # fmt: skip
    worker.start()
    producer.start()
    done = 0
    try:
        if not wait_for(lambda: len(processed) >= 1000, 60):
            raise RuntimeError("the worker did not process 1000 jobs before the first kill")
        for _ in range(kills):
            time.sleep(random.uniform(0, 1.5))
            broker.kill()
            before = len(confirmed)
            broker.start()
            done += 1
            if not wait_for(lambda before=before: len(confirmed) >= before + 200, 90):
                raise RuntimeError("the producer did not get 200 jobs confirmed after a restart")
            wanted = set(confirmed[before : before + 200])
            if not wait_for(lambda wanted=wanted: wanted <= set(processed), 60):
                print(f"STALL after restart {done}: {len(processed)} processed, {len(confirmed)} confirmed")
                print_tasks(worker)
                return False, done
        return True, done
    finally:
        stop.set()
        producer.join(60)
        worker.shutdown(timeout=30)
        broker.kill()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=6, help="restarts in each run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(message)s")
    restarts = 0
    for run in range(args.runs):
        kept_up, done = one_run(args.kills)
        restarts += done
        print(f"run {run}: {done} restarts, {'kept up' if kept_up else 'STALLED'}", flush=True)
        if not kept_up:
            break
    else:
        print(f"{restarts} restarts, no stall")
        return
    print(f"stalled after {restarts} restarts")
    sys.exit(1)


if __name__ == "__main__":
    main()
