"""The ack batcher's choice of frames (pure logic; test_bus.py runs it against RabbitMQ)."""

from __future__ import annotations

import asyncio

from lazaretto_core.bus_acks import AckBatcher


class FakeDelivery:
    def __init__(self, channel: object, tag: int, sent: list[tuple[int, bool]]) -> None:
        self.channel = channel
        self.delivery_tag: int | None = tag
        self._sent = sent

    async def ack(self, multiple: bool = False) -> None:
        self._sent.append((self.delivery_tag or 0, multiple))


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_run_of_finished_deliveries_is_one_multiple_ack() -> None:
    sent: list[tuple[int, bool]] = []
    acks, channel = AckBatcher(), object()
    for tag in range(1, 201):
        acks.finished(FakeDelivery(channel, tag, sent))
    await settle()
    assert sent == [(200, True)]


async def test_a_delivery_still_in_its_handler_is_not_covered() -> None:
    sent: list[tuple[int, bool]] = []
    acks, channel = AckBatcher(), object()
    for tag in (1, 2, 4, 5):
        acks.finished(FakeDelivery(channel, tag, sent))
    await settle()
    # 3 is still being handled: 1-2 together, 4 and 5 each alone (never a multiple ack over 3).
    assert sent == [(2, True), (4, False), (5, False)]
    acks.finished(FakeDelivery(channel, 3, sent))
    acks.finished(FakeDelivery(channel, 6, sent))
    await settle()
    assert sent[3:] == [(6, True)]  # 3 and 6; 4 and 5 were acked already


async def test_channels_count_their_own_tags() -> None:
    sent: list[tuple[int, bool]] = []
    acks, first, second = AckBatcher(), object(), object()
    acks.finished(FakeDelivery(first, 1, sent))
    acks.finished(FakeDelivery(second, 1, sent))
    acks.finished(FakeDelivery(second, 2, sent))
    await settle()
    assert sorted(sent) == [(1, False), (2, True)]


async def test_drain_sends_what_waits() -> None:
    sent: list[tuple[int, bool]] = []
    acks = AckBatcher()
    acks.finished(FakeDelivery(object(), 1, sent))
    await acks.drain()
    assert sent == [(1, False)]


async def test_a_nacked_delivery_does_not_stop_later_runs() -> None:
    sent: list[tuple[int, bool]] = []
    acks, channel = AckBatcher(), object()
    acks.finished(FakeDelivery(channel, 1, sent))
    # 2 was handed back with a nack by the bus itself: never acked here, and no longer in the way
    acks.settled(FakeDelivery(channel, 2, sent))
    for tag in (3, 4, 5):
        acks.finished(FakeDelivery(channel, tag, sent))
    await settle()
    assert sent == [(5, True)]


class Broker:
    """AMQP 0-9-1's rule for acks on one channel: a tag that is not outstanding is a channel error."""

    def __init__(self, delivered: int) -> None:
        self.outstanding = set(range(1, delivered + 1))
        self.errors: list[int] = []

    def ack(self, tag: int, multiple: bool) -> None:
        if tag not in self.outstanding:
            self.errors.append(tag)  # RabbitMQ: PRECONDITION_FAILED - unknown delivery tag
        elif multiple:
            self.outstanding -= {t for t in self.outstanding if t <= tag}
        else:
            self.outstanding.discard(tag)


class SlowDelivery(FakeDelivery):
    """A delivery whose ack frame reaches the broker after `turns` turns of the loop (the write path
    awaits, and a busy connection takes longer for some frames than for others)."""

    def __init__(self, channel: object, tag: int, broker: Broker, turns: int = 0) -> None:
        super().__init__(channel, tag, [])
        self.broker, self.turns = broker, turns

    async def ack(self, multiple: bool = False) -> None:
        for _ in range(self.turns):
            await asyncio.sleep(0)
        self.broker.ack(self.delivery_tag or 0, multiple)


async def test_a_later_multiple_ack_never_overtakes_an_earlier_single_ack_in_its_range() -> None:
    broker, acks, channel = Broker(4), AckBatcher(), object()
    # 1 and 3 finish while 2 is still in its handler: 1, then 3 alone, and 3's frame is slow
    acks.finished(SlowDelivery(channel, 1, broker))
    acks.finished(SlowDelivery(channel, 3, broker, turns=5))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # 2 and 4 finish meanwhile: one multiple ack up to 4, which covers 3 too
    acks.finished(SlowDelivery(channel, 2, broker))
    acks.finished(SlowDelivery(channel, 4, broker))
    await acks.drain()
    # The broker saw 3 acked before the multiple ack over it, and knew every tag it was asked about
    assert broker.errors == []
    assert broker.outstanding == set()
