"""Do acknowledgements written just before a connection closes take effect on a quorum queue?

``python tools/rabbitmq_acks_at_close.py --runs 12``: per run, a fresh quorum queue on the
broker at 127.0.0.1:5672 gets 150 confirmed messages; a consumer receives them all,
acknowledges them (one frame each, or one ``multiple`` frame with ``--multiple``), makes
one ``basic.qos`` round trip (the broker's channel has read them), waits ``--grace``
seconds and closes its connection.  Once the broker has taken back what that connection
held, none should be left: a run that leaves some lost acknowledgements (RabbitMQ keeps
a channel's commands to a quorum queue past its ``quorum_commands_soft_limit`` until
earlier ones are applied, and drops them at the close).  Prints each run's count and the
runs that lost some.  Uses raw aiormq, not the library; each run deletes its queue.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import aiormq

URL = "amqp://guest:guest@127.0.0.1:5672/"
MESSAGES = 150


async def left_after_close(multiple: bool, grace: float) -> int:
    name = f"mb_acks_at_close_{uuid.uuid4().hex[:8]}"
    admin = await aiormq.connect(URL)
    try:
        channel = await admin.channel()
        await channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        await asyncio.gather(*(channel.basic_publish(b"job", routing_key=name) for _ in range(MESSAGES)))
        await acknowledge_and_close(name, multiple, grace)
        return await settled_count(channel, name)
    finally:
        await (await admin.channel()).queue_delete(name)
        await admin.close()


async def settled_count(channel: aiormq.abc.AbstractChannel, name: str) -> int:
    """The queue's ready count once no consumer is left and it held still for 0.25 s."""
    deadline, counts = time.monotonic() + 10, []
    while time.monotonic() < deadline:
        ok = await channel.queue_declare(name, passive=True)
        counts = [*counts, int(ok.message_count or 0)] if not ok.consumer_count else []
        if len(counts) > 5 and len(set(counts[-6:])) == 1:
            break
        await asyncio.sleep(0.05)
    return counts[-1] if counts else -1


async def acknowledge_and_close(name: str, multiple: bool, grace: float) -> None:
    connection = await aiormq.connect(URL)
    channel = await connection.channel()
    received: list[aiormq.abc.DeliveredMessage] = []
    full = asyncio.Event()

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        received.append(message)
        if len(received) == MESSAGES:
            full.set()

    await channel.basic_qos(prefetch_count=MESSAGES)
    await channel.basic_consume(name, on_message, no_ack=False)
    await asyncio.wait_for(full.wait(), 10)
    if multiple:
        await channel.basic_ack(received[-1].delivery_tag or 0, multiple=True, wait=False)
    else:
        for message in received:
            await channel.basic_ack(message.delivery_tag or 0, wait=False)
    await channel.basic_qos(prefetch_count=MESSAGES)  # the channel has read every frame
    await asyncio.sleep(grace)
    await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--multiple", action="store_true", help="one multiple frame, not one a message")
    parser.add_argument("--grace", type=float, default=0.0, help="seconds from the round trip to the close")
    args = parser.parse_args()
    counts = [await left_after_close(args.multiple, args.grace) for _ in range(args.runs)]
    frames = "one multiple frame" if args.multiple else "a frame each"
    print(f"{MESSAGES} acknowledged ({frames}), closed {args.grace} s after the round trip")
    print(f"left in the queue, per run: {counts}")
    print(f"runs that lost acknowledgements: {sum(count != 0 for count in counts)} of {args.runs}")


if __name__ == "__main__":
    asyncio.run(main())
