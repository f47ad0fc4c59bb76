"""The consumer's side of a broker that cannot store a message, or that drops the connection a delivery
came on: the delivery is neither lost nor left held on the channel.

A retry copy the broker nacks (here: the retry queue is full with `overflow: reject-publish`, as a
quorum queue without a leader nacks) is published again; the delivery stays unacked meanwhile and is
handled once the broker takes the copy. A delivery whose channel died while its handler ran cannot be
acked there: the broker redelivers it on the restored channel.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

import pytest

from lazaretto_core.bus import Bus, MessageContext, queue_name, retry_queue_name
from lazaretto_core.contracts import AbuseObserved
from lazaretto_core.errors import RetryLater

EXAMPLE = AbuseObserved.model_validate(AbuseObserved.example)


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["/usr/sbin/rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=120
    )
    return done.stdout


def vhost_of(amqp_url: str) -> str:
    return unquote(urlsplit(amqp_url).path.lstrip("/"))


@pytest.fixture
async def bus(amqp_url: str) -> AsyncIterator[Bus]:
    bus = Bus(amqp_url, "test", max_attempts=3, retry_delays=(0.1,))
    await bus.connect()
    yield bus
    await bus.close()


async def wait_for(predicate: object, timeout: float = 60.0) -> None:
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_retry_copy_the_broker_nacks_is_published_again_and_the_message_handled(
    bus: Bus, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    vhost = vhost_of(amqp_url)
    queue = queue_name("test")
    attempts: list[int] = []

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RetryLater("the database is failing over")

    bus.on(AbuseObserved, handler)
    await bus.consume(queue)
    # Given a retry queue that refuses every message (the broker nacks the publish),
    pattern = f"^{retry_queue_name(queue, 0.1)}$".replace(".", r"\.")
    rabbitmqctl(
        "set_policy", "-p", vhost, "--apply-to", "queues", "refuse-retries", pattern,
        '{"max-length": 0, "overflow": "reject-publish"}',
    )  # fmt: skip
    try:
        # when a message's handler asks for a retry,
        with caplog.at_level(logging.WARNING, logger="lazaretto_core.bus"):
            await bus.publish(EXAMPLE)
            await wait_for(lambda: "nacked" in caplog.text)
        assert attempts
        assert set(attempts) == {1}
    finally:
        # and the broker takes the copy again,
        rabbitmqctl("clear_policy", "-p", vhost, "refuse-retries")
    # then the message is retried and handled: not lost, not held on the channel for ever.
    await wait_for(lambda: 2 in attempts)
    assert "Consumer callback failed" not in caplog.text


async def test_a_delivery_whose_connection_died_in_its_handler_is_redelivered_and_handled(
    bus: Bus, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    vhost = vhost_of(amqp_url)
    handled: list[str] = []
    release = asyncio.Event()

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        if not handled:
            handled.append(ctx.message_id or "")
            await release.wait()  # the work is still going on when the connection goes
            return
        handled.append(ctx.message_id or "")

    bus.on(AbuseObserved, handler)
    await bus.consume(queue_name("test"))
    message_id = await bus.publish(EXAMPLE)
    await wait_for(lambda: handled)
    # Given the handler is working when the broker closes the connection (as when its node dies),
    rabbitmqctl("close_all_connections", "-p", vhost, "test: the node went away")
    await asyncio.sleep(1.0)
    # when the handler finishes on the dead channel,
    release.set()
    # then the broker redelivers the message on the restored channel and it is handled there (the
    # service's inbox dedupes the second time), and the lost ack is no consumer failure.
    await wait_for(lambda: len(handled) >= 2)
    assert handled[:2] == [message_id, message_id]
    assert "Consumer callback failed" not in caplog.text


async def test_publishes_awaiting_their_confirm_when_a_nack_renews_the_channel_are_published_again(
    bus: Bus,
) -> None:
    # (The race behind a flaky run of the test above: the retry copy's nack renewed the channel while
    # the test's own publish still waited for its confirm on it, and that publish raised ChannelClosed.)
    seen: set[str] = set()

    async def handler(event: AbuseObserved, ctx: MessageContext) -> None:
        seen.add(ctx.message_id)

    bus.on(AbuseObserved, handler)
    await bus.consume(queue_name("test"))
    # Given many publishes in flight on the publish channel, their confirms not all in yet
    ids = [f"in-flight-{n}" for n in range(300)]
    publishes = [asyncio.create_task(bus.publish(EXAMPLE, message_id=i)) for i in ids]
    await asyncio.sleep(0)
    # When a nacked publish renews the channel meanwhile (what `_publish_with_retry` does on a nack)
    await bus._renew_publish_channel(bus._publish_channel)
    # Then every publish still completes (again on the new channel where its confirm was lost), and
    # every message reaches the consumer
    assert await asyncio.gather(*publishes) == ids
    await wait_for(lambda: seen == set(ids))
