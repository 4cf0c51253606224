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
from typing import Any

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
    """What a RabbitMQ channel does with acknowledgement frames."""

    def __init__(self, delivered: int) -> None:
        self.outstanding = set(range(1, delivered + 1))
        self.frames = 0

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


@st.composite
def _settles(draw: Any) -> tuple[int, set[int], list[list[int]]]:
    """Deliveries 1..n, the ones the client never saw, and the seen ones split into settles."""
    count = draw(st.integers(1, 60))
    dropped = draw(st.sets(st.integers(1, count), max_size=3))
    seen = draw(st.permutations([tag for tag in range(1, count + 1) if tag not in dropped]))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(seen) - 1)), max_size=8)))
    groups = [seen[a:b] for a, b in zip([0, *cuts], [*cuts, len(seen)], strict=True)]
    return count, dropped, [group for group in groups if group]


@settings(max_examples=300, deadline=None)
@given(_settles())
def test_the_frames_settle_exactly_the_deliveries_asked_for(
    case: tuple[int, set[int], list[list[int]]],
) -> None:
    count, dropped, groups = case

    async def main() -> None:
        channel = BrokerChannel(count)
        acks = _seen_by(Acknowledgements(), sorted(set(range(1, count + 1)) - dropped))
        asked: set[int] = set()
        for group in groups:
            await acks.write(channel, group)  # type: ignore[arg-type]
            asked.update(group)
            assert channel.outstanding == set(range(1, count + 1)) - asked

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
        await acks.write(channel, [])  # type: ignore[arg-type]
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
        await calm.applied()
        assert time.monotonic() - started < _amqp._SETTLE_GRACE / 2
        await busy.applied()
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
