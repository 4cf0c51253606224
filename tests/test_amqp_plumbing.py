"""The RabbitMQ queue's AMQP plumbing without a broker: its acknowledgements against a model
of a broker channel, and how a call the client abandons reaches the caller.

A ``multiple`` frame settles every outstanding delivery of the channel up to its tag, and a
tag that is not outstanding closes the channel: the frames must settle exactly the
deliveries asked for, in as few frames as the order of settling allows.
"""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from aiormq.exceptions import ChannelInvalidStateError

    from microbatching.queues import _amqp
    from microbatching.queues._amqp import Acknowledgements, Link
except ImportError:
    if os.environ.get("MICROBATCHING_REQUIRE_SERVICES") == "1":
        raise
    pytest.skip("aio-pika is not installed", allow_module_level=True)


class BrokerChannel:
    """What a RabbitMQ channel does with deliveries and acknowledgement frames."""

    def __init__(self, delivered: int = 0) -> None:
        self.outstanding = set(range(1, delivered + 1))
        self.last_tag = delivered
        self.frames = 0

    def deliver(self) -> int:
        self.last_tag += 1
        self.outstanding.add(self.last_tag)
        return self.last_tag

    async def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> None:
        if delivery_tag not in self.outstanding:
            raise AssertionError(f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}")
        settled = {tag for tag in self.outstanding if tag <= delivery_tag} if multiple else {delivery_tag}
        self.outstanding -= settled
        self.frames += 1


def _seen_by(acks: Acknowledgements, tags: list[int]) -> Acknowledgements:
    for tag in tags:
        acks.delivered(tag)
    return acks


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_frames_settle_exactly_the_deliveries_asked_for(data: st.DataObject) -> None:
    # Deliveries arrive between settles, a few never reach the client (dropped for a
    # cancelled consumer), some are held to the end, and settles come in any order.
    async def main() -> None:
        channel, acks = BrokerChannel(), Acknowledgements()
        held: list[int] = []  # seen by the client, not settled
        unseen: set[int] = set()
        for _ in range(data.draw(st.integers(1, 10), label="steps")):
            for reaches_client in data.draw(st.lists(st.integers(0, 9).map(bool), max_size=25)):
                tag = channel.deliver()
                if reaches_client:
                    acks.delivered(tag)
                    held.append(tag)
                else:
                    unseen.add(tag)
            settle = data.draw(st.lists(st.sampled_from(held), unique=True), label="settle") if held else []
            await acks.write(channel, settle)  # type: ignore[arg-type]
            held = [tag for tag in held if tag not in settle]
            assert channel.outstanding == unseen | set(held)

    asyncio.run(main())


def test_deliveries_settled_in_delivery_order_take_one_frame_a_settle() -> None:
    async def main() -> None:
        channel = BrokerChannel(300)
        acks = _seen_by(Acknowledgements(), list(range(1, 301)))
        for start in range(1, 301, 50):
            await acks.write(channel, range(start, start + 50))  # type: ignore[arg-type]
        assert (channel.frames, channel.outstanding) == (6, set())

    asyncio.run(main())


def test_a_settle_overtaken_by_a_later_one_is_caught_up_in_one_frame() -> None:
    async def main() -> None:
        channel = BrokerChannel(150)
        acks = _seen_by(Acknowledgements(), list(range(1, 151)))
        await acks.write(channel, range(51, 101))  # type: ignore[arg-type]
        assert channel.frames == 50  # 1..50 still held: one frame each
        await acks.write(channel, range(1, 51))  # type: ignore[arg-type]
        await acks.write(channel, range(101, 151))  # type: ignore[arg-type]
        assert (channel.frames, channel.outstanding) == (52, set())

    asyncio.run(main())


def test_a_delivery_never_seen_here_is_never_acknowledged() -> None:
    async def main() -> None:
        channel = BrokerChannel(10)
        acks = _seen_by(Acknowledgements(), [1, 2, 3, 5, 6, 7, 8, 9, 10])  # 4 dropped by the client
        await acks.write(channel, [1, 2, 3, 5, 6, 7, 8, 9, 10])  # type: ignore[arg-type]
        assert channel.outstanding == {4}

    asyncio.run(main())


def test_closing_waits_only_after_more_frames_than_the_broker_passes_on_at_once() -> None:
    async def main() -> float:
        few, many = BrokerChannel(300), BrokerChannel(300)
        calm, busy = (
            _seen_by(Acknowledgements(), list(range(1, 301))),
            _seen_by(Acknowledgements(), list(range(1, 301))),
        )
        await calm.write(few, range(1, 301))  # type: ignore[arg-type]
        await busy.write(many, range(2, 301))  # type: ignore[arg-type]
        await busy.write(many, [1])  # type: ignore[arg-type]
        assert (few.frames, many.frames) == (1, 300)
        started = time.monotonic()
        await calm.grace_before_close()
        assert time.monotonic() - started < _amqp._SETTLE_GRACE / 2
        await busy.grace_before_close()
        return time.monotonic() - started

    assert asyncio.run(main()) >= _amqp._SETTLE_GRACE * 0.9


def test_calls_the_client_cancelled_fail_as_a_closed_channel_not_as_a_cancellation() -> None:
    # aiormq cancels the calls of a connection it gives up; a gather of such calls does not
    # end cancelled but with the CancelledError as its exception.  Either way the caller
    # must get a client error, not a cancellation that would end its task.
    async def main() -> list[str]:
        link = Link(SimpleNamespace(), lambda exc: None, timeout=5)  # type: ignore[arg-type]
        seen = []
        for wrap in (asyncio.ensure_future, asyncio.gather):
            call = asyncio.get_running_loop().create_future()
            call.cancel()
            with pytest.raises(ChannelInvalidStateError, match="abandoned") as raised:
                await link.within(wrap(call))
            seen.append(str(raised.value))
        return seen

    assert len(asyncio.run(main())) == 2
