"""LAZARETTO_BUS_QUEUE_TYPE on the real (single-node) broker: quorum queues work there too, and an
install switching an existing classic queue to quorum is stopped with what the operator must do."""

from __future__ import annotations

import asyncio

import pytest

from lazaretto_core.bus import Bus, MessageContext, queue_name
from lazaretto_core.bus_queues import QueueTypeMismatch, broker_urls
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.errors import RetryLater

EXAMPLE = AbuseObserved.model_validate(AbuseObserved.example)


async def test_quorum_queues_deliver_and_retry_through_their_delay_queues(amqp_url: str) -> None:
    bus = Bus(amqp_url, "test", queue_type="quorum", max_attempts=3, retry_delays=(0.1, 0.2))
    attempts: list[int] = []

    async def flaky(event: AbuseObserved, ctx: MessageContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RetryLater("peer down")

    bus.on(AbuseObserved, flaky)
    await bus.connect()
    try:
        await bus.consume(queue_name("test"))
        await bus.publish(EXAMPLE)
        async with asyncio.timeout(60):
            while len(attempts) < 3:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # no fourth delivery may follow a success
        assert attempts == [1, 2, 3]
    finally:
        await bus.close()


async def test_a_classic_queue_is_not_silently_redeclared_as_quorum(amqp_url: str) -> None:
    queue = queue_name("upgraded")
    classic = Bus(amqp_url, "test")
    classic.on(AbuseObserved, _ignore)
    await classic.connect()
    await classic.consume(queue)
    await classic.close()

    quorum = Bus(amqp_url, "test", queue_type="quorum")
    quorum.on(AbuseObserved, _ignore)
    await quorum.connect()
    try:
        with pytest.raises(QueueTypeMismatch) as refused:
            await quorum.consume(queue)
        message = str(refused.value)
        assert "LAZARETTO_BUS_QUEUE_TYPE=quorum" in message
        assert "keep LAZARETTO_BUS_QUEUE_TYPE=classic" in message
        assert "rabbitmqctl delete_queue" in message
        assert "PRECONDITION_FAILED" in message
    finally:
        await quorum.close()


def test_a_bus_url_may_list_the_nodes_of_a_cluster() -> None:
    assert broker_urls("amqp://u:p@a:5672/v, amqp://u:p@b:5672/v") == [
        "amqp://u:p@a:5672/v",
        "amqp://u:p@b:5672/v",
    ]
    with pytest.raises(ValueError, match="same user"):
        Bus("amqp://one:p@a/v,amqp://two:p@b/v", "test")


async def _ignore(event: AbuseObserved, ctx: MessageContext) -> None:
    return None
