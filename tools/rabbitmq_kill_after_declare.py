"""Does a quorum queue keep confirmed messages when RabbitMQ is SIGKILLed soon after its declare?

``python tools/rabbitmq_kill_after_declare.py 0.5 2 10 --runs 3``: on a private broker
(its own port and data directory, started and killed here; never the shared one), for
each wait: declare a quorum queue, publish 300 persistent messages with publisher
confirms, SIGKILL the broker that many seconds after the declare, restart it, and count
the queue's messages (looking for up to 15 s while it recovers).  Prints one line per run.
Needs ``rabbitmq-server`` and root (the server runs as its own user).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import uuid
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_rabbitmq import PrivateBroker  # the tests' private broker


async def fill_and_kill(broker: PrivateBroker, name: str, wait: float) -> float:
    connection = await aio_pika.connect(broker.url)
    channel = await connection.channel(publisher_confirms=True)
    declared = time.monotonic()
    await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    message = aio_pika.Message(b"x", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
    await asyncio.gather(*(channel.default_exchange.publish(message, routing_key=name) for _ in range(300)))
    await asyncio.sleep(max(0.0, wait - (time.monotonic() - declared)))
    broker.kill()
    return time.monotonic() - declared


async def count(broker: PrivateBroker, name: str) -> int:
    found = 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and found != 300:
        connection = await aio_pika.connect(broker.url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, passive=True)
            found = queue.declaration_result.message_count or 0
        finally:
            await connection.close()
        await asyncio.sleep(0.5)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("waits", type=float, nargs="+", help="seconds from the declare to the kill")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = Path("/tmp") / f"mb-rabbitmq-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o755)
    broker = PrivateBroker(base)
    broker.start()
    try:
        for wait in args.waits:
            for run in range(args.runs):
                name = f"kill_after_{uuid.uuid4().hex[:8]}"
                killed_after = asyncio.run(fill_and_kill(broker, name, wait))
                broker.start()
                kept = asyncio.run(count(broker, name))
                print(f"wait {wait:g} s, run {run + 1}: killed {killed_after:.2f} s after the declare, "
                      f"{kept}/300 messages after the restart", flush=True)  # fmt: skip
    finally:
        broker.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
