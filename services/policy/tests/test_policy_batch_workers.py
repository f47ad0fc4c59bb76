"""The batcher's workers (pure logic, a recording stand-in for the handlers): batches are decided at
once up to `workers`, never two holding one address; an address's observations wait for its batch
being decided and keep their order; a message that fails in its batch and alone fails, not left
waiting."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import cast

import pytest

from lazaretto_core.bus import MessageContext
from lazaretto_core.contracts import AbuseObserved
from policy.batch import ObservationBatcher
from policy.handlers import PolicyHandlers

Items = Sequence[tuple[AbuseObserved, MessageContext]]


def seen(ip: str) -> AbuseObserved:
    now = datetime.now(UTC).isoformat()
    return AbuseObserved.model_validate(
        {
            **AbuseObserved.example,
            "observation_id": str(uuid.uuid4()),
            "ip": ip,
            "first_seen": now,
            "last_seen": now,
        }
    )


def context(event: AbuseObserved) -> MessageContext:
    return MessageContext(event.message_key(), event.routing_key, None, 1, None, None)


class Handlers:
    """Records each batch (its addresses, in order) and holds it until its address's gate opens."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.running: list[set[str]] = []
        self.most_at_once = 0
        self.gates: dict[str, asyncio.Event] = {}
        self.fail_with: Exception | None = None

    def gate(self, ip: str) -> asyncio.Event:
        return self.gates.setdefault(ip, asyncio.Event())

    async def on_abuse_batch(self, items: Items) -> None:
        addresses = [event.ip for event, _ in items]
        here = set(addresses)
        assert all(not (here & other) for other in self.running), "two batches held one address"
        self.batches.append(addresses)
        self.running.append(here)
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            for ip in here:
                await self.gate(ip).wait()
        finally:
            self.running.remove(here)
        if self.fail_with is not None:
            raise self.fail_with

    async def on_abuse_observed(self, event: AbuseObserved, ctx: MessageContext) -> None:
        await self.on_abuse_batch([(event, ctx)])


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


def batcher(handlers: Handlers, workers: int) -> ObservationBatcher:
    return ObservationBatcher(cast(PolicyHandlers, handlers), max_size=50, workers=workers)


async def test_two_workers_decide_two_batches_at_once_and_an_address_waits_for_its_own(
    handlers: Handlers,
) -> None:
    decider = batcher(handlers, workers=2)
    # Given a batch of address a held while being decided
    a1, a2, b1, c1 = seen("100.64.0.1"), seen("100.64.0.1"), seen("100.64.0.2"), seen("100.64.0.3")
    first = asyncio.create_task(decider.submit(a1, context(a1)))
    await until(lambda: handlers.batches == [["100.64.0.1"]])
    # When a's next observation arrives with others' (a first, as a later revision would)
    rest = [asyncio.create_task(decider.submit(e, context(e))) for e in (a2, b1, c1)]
    # Then the others are decided beside a's batch, a's next waits for it
    await until(lambda: len(handlers.batches) == 2)
    assert handlers.batches[1] == ["100.64.0.2", "100.64.0.3"]
    assert handlers.most_at_once == 2
    handlers.gate("100.64.0.2").set()
    handlers.gate("100.64.0.3").set()
    await asyncio.gather(rest[1], rest[2])
    await asyncio.sleep(0.05)
    assert len(handlers.batches) == 2
    assert not rest[0].done()
    # And once a's batch committed, a's next is decided, after it
    handlers.gate("100.64.0.1").set()
    await asyncio.gather(first, rest[0])
    assert handlers.batches == [["100.64.0.1"], ["100.64.0.2", "100.64.0.3"], ["100.64.0.1"]]
    await decider.stop()


async def test_one_worker_decides_one_batch_at_a_time(handlers: Handlers) -> None:
    decider = batcher(handlers, workers=1)
    a1, b1 = seen("100.64.0.1"), seen("100.64.0.2")
    first = asyncio.create_task(decider.submit(a1, context(a1)))
    await until(lambda: len(handlers.batches) == 1)
    second = asyncio.create_task(decider.submit(b1, context(b1)))
    await asyncio.sleep(0.05)
    assert len(handlers.batches) == 1
    handlers.gate("100.64.0.1").set()
    handlers.gate("100.64.0.2").set()
    await asyncio.gather(first, second)
    assert handlers.batches == [["100.64.0.1"], ["100.64.0.2"]]
    assert handlers.most_at_once == 1
    await decider.stop()


async def test_a_flood_from_busy_addresses_does_not_hold_back_the_others_within_the_look_ahead(
    handlers: Handlers,
) -> None:
    decider = batcher(handlers, workers=2)
    flooder = [seen("100.64.0.1") for _ in range(60)]
    tasks = [asyncio.create_task(decider.submit(flooder[0], context(flooder[0])))]
    await until(lambda: len(handlers.batches) == 1)
    # Given 59 more from the address being decided queued ahead of another's
    other = seen("100.64.0.9")
    tasks += [asyncio.create_task(decider.submit(e, context(e))) for e in flooder[1:]]
    tasks.append(asyncio.create_task(decider.submit(other, context(other))))
    # Then the other's is decided meanwhile, alone
    await until(lambda: len(handlers.batches) == 2)
    assert handlers.batches[1] == ["100.64.0.9"]
    handlers.gate("100.64.0.9").set()
    handlers.gate("100.64.0.1").set()
    await asyncio.gather(*tasks)
    # And the flood went in its order, in batches of at most max_size
    assert sum(len(b) for b in handlers.batches) == 61
    assert max(len(b) for b in handlers.batches) == 50
    await decider.stop()


async def test_a_message_that_fails_in_its_batch_and_alone_fails_it_is_not_left_waiting(
    handlers: Handlers,
) -> None:
    decider = batcher(handlers, workers=2)
    handlers.fail_with = RuntimeError("a bug")
    handlers.gate("100.64.0.1").set()
    event = seen("100.64.0.1")
    # The batch fails, and so does the one-by-one fallback: the message fails, it is not left waiting
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(decider.submit(event, context(event)), 5)
    await decider.stop()
